#!/usr/bin/python3
"""64 Python-source prompts for `moeflow bench batch`, from this machine's
Python 3.11 standard library (/usr/lib/python3.11).

Only files outside the predictor's training split are used (SHA-1 of the
path relative to the library root mod 10 in 7..9, see ../pycode/make_splits.py),
so a learned path predictor never saw them.  Files in sorted path order, one prompt
each: about 1200 bytes starting at the first line boundary after the middle of
the file.  Output: one prompt per line, backslash escaped (\\n newline, \\t tab,
\\\\ backslash).  Usage: make_prompts.py [ROOT] [OUT] [COUNT] [BYTES]
"""
import os
import sys

if any(a.startswith("-") for a in sys.argv[1:]):  # --help and the like: usage, touching no file
    print(__doc__)
    sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
if len(sys.argv) > 1 and not os.path.isdir(sys.argv[1]):
    sys.exit("%s: ROOT %s is not a directory (usage in --help)" % (os.path.basename(sys.argv[0]), sys.argv[1]))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pycode"))
from make_splits import py_files, split_digit  # noqa: E402  (the same files and split digits)

ROOT = sys.argv[1] if len(sys.argv) > 1 else "/usr/lib/python3.11"
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts-py64.txt")
COUNT = int(sys.argv[3]) if len(sys.argv) > 3 else 64
BYTES = int(sys.argv[4]) if len(sys.argv) > 4 else 1200


def main():
    prompts = []
    for rel in py_files(ROOT):
        if split_digit(rel) < 7:
            continue
        try:
            text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) < 3 * BYTES or not text.isascii():
            continue
        start = text.index("\n", len(text) // 2) + 1
        piece = text[start:start + BYTES]
        piece = piece[:piece.rfind("\n") + 1]
        if len(piece) < BYTES // 2:
            continue
        prompts.append(piece)
        if len(prompts) == COUNT:
            break
    if not prompts:
        sys.exit(f"no prompt found under {ROOT}: {OUT} left as it was")
    with open(OUT, "w", encoding="utf-8") as f:
        for p in prompts:
            f.write(p.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t") + "\n")
    print(f"{OUT}: {len(prompts)} prompts")


if __name__ == "__main__":
    main()
