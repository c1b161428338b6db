#!/usr/bin/python3
"""Deterministic, disjoint train/eval text splits of this machine's Python 3.11
standard library sources (/usr/lib/python3.11), for the routing-path predictor.

Each .py file goes to one split by the SHA-1 of its path relative to the
library root: digest mod 10 in 0..6 -> train, 7 -> dev (model selection
between predictors, never trained on), 9 -> eval (8 unused).  Files
are taken in sorted path order, joined with <|endoftext|>, until the split's
byte budget is reached.  Usage: make_splits.py [ROOT] [OUTDIR] [TRAIN_BYTES]

TRAIN_BYTES (default 400000) only lengthens or shortens train.txt: a larger
budget gives the committed train.txt followed by more files; eval.txt is the
same whatever it is.
"""
import hashlib
import os
import sys

if any(a.startswith("-") for a in sys.argv[1:]):  # --help and the like: usage, touching no file
    print(__doc__)
    sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
if len(sys.argv) > 1 and not os.path.isdir(sys.argv[1]):
    sys.exit("%s: ROOT %s is not a directory (usage in --help)" % (os.path.basename(sys.argv[0]), sys.argv[1]))

ROOT = sys.argv[1] if len(sys.argv) > 1 else "/usr/lib/python3.11"
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
BUDGET = {"train": int(sys.argv[3]) if len(sys.argv) > 3 else 400_000, "dev": 60_000, "eval": 60_000}
SEP = "<|endoftext|>"


def split_digit(rel):
    """0..9 from the SHA-1 of a path relative to the library root."""
    return int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 10


def split_of(rel):
    d = split_digit(rel)
    return "train" if d <= 6 else "dev" if d == 7 else "eval" if d == 9 else None


def py_files(root):
    """The .py files under root outside site-/dist-packages, relative to root, sorted."""
    files = []
    for dirpath, dirnames, names in os.walk(root):
        dirnames.sort()
        if "site-packages" in dirpath or "dist-packages" in dirpath:
            continue
        for n in sorted(names):
            if n.endswith(".py"):
                files.append(os.path.relpath(os.path.join(dirpath, n), root))
    files.sort()
    return files


def main():
    files = py_files(ROOT)
    parts = {s: [] for s in BUDGET}
    size = {s: 0 for s in BUDGET}
    for rel in files:
        s = split_of(rel)
        if s is None or size[s] >= BUDGET[s]:
            continue
        try:
            text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        if SEP in text or not text.strip() or len(text) > 40_000:
            continue
        parts[s].append(text)
        size[s] += len(text.encode()) + len(SEP)
    os.makedirs(OUT, exist_ok=True)
    for s in parts:
        with open(os.path.join(OUT, s + ".txt"), "w", encoding="utf-8") as f:
            f.write(SEP.join(parts[s]))
        print(f"{s}: {len(parts[s])} files, {size[s]} bytes")


if __name__ == "__main__":
    main()
