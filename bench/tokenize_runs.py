#!/usr/bin/python3
"""Long runs of one kind of character through every pre-tokenizer: times
`moeflow tokenize --file` on each text at two sizes and flags a time that grows
faster than the text (a matcher that reads a run once per place in it).

The tokenizers are the bundled tokenizer.json with each variant of
tests/fixtures/tokenizer/variant-vectors.jsonl spliced in (as test_variants
does), and the SentencePiece files of tests/fixtures/tokenizer.  The texts:
runs of spaces (alone, then a letter, a digit, a line break, an emoji, a
symbol, a Thai letter), tabs, vertical tabs, line breaks, "\\r\\n", space and line
break alternating, digits, letters (ASCII, accented, Greek, Arabic, Devanagari,
CJK, Hangul, full-width), capitals, marks, punctuation, apostrophes, no-break
and ideographic spaces then a digit, emoji.

  /usr/bin/python3 bench/tokenize_runs.py --moeflow build/server/moeflow [--kb 100] [--reps 2] [--only deepseek-llm]

Prints one line per tokenizer and text: seconds (the best of --reps runs) at --kb and at four times that,
their ratio (about 4 when linear; "superlinear" past 6, where the small one
took over 0.05 s) and a digest of the ids, to compare two builds' ids.  A
benchmark, not a test: it never fails on timings.  A run past --timeout
seconds is cut and shown as such.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (unit repeated, what ends the run)
RUNS = {
    "spaces": (" ", ""), "spaces-letter": (" ", "a"), "spaces-digit": (" ", "1"),
    "spaces-crlf": (" ", "\r\n"), "spaces-emoji": (" ", "\U0001f600"), "spaces-euro": (" ", "\u20ac"),
    "spaces-thai": (" ", "\u0e01"), "tabs-digit": ("\t", "1"), "vtabs-digit": ("\x0b", "1"),
    "newlines": ("\n", ""), "newlines-letter": ("\n", "a"), "crlf": ("\r\n", ""), "space-newline": (" \n", ""),
    "newline-space-digit": ("\n ", "1"), "cr-space": ("\r ", "x"), "space-nbsp-digit": (" \u00a0", "1"),
    "nbsp-digit": ("\u00a0", "1"), "ideographic-space-digit": ("\u3000", "1"), "space-digit": (" 1", ""),
    "spaces50-digit": (" " * 50 + "1", ""),
    "digits": ("1", ""), "letters": ("a", ""), "capitals": ("A", ""), "lower-upper": ("aA", ""),
    "e-acute": ("\u00e9", ""), "greek": ("\u03b1", ""), "arabic": ("\u0628", ""), "devanagari": ("\u0915", ""),
    "cjk": ("\u4e2d", ""), "hangul": ("\ud55c", ""), "fullwidth": ("\uff21", ""), "marks": ("\u0301", ""),
    "punctuation": ("!", ""), "punct-letter": ("!a", ""), "punct-mixed": (".,;", ""), "apostrophes": ("'", ""),
    "space-apostrophe": (" '", ""), "emoji": ("\U0001f600", ""),
}


def tokenizers(tmp):
    base = json.load(open(os.path.join(SRC, "models", "pycode-moe-18m", "tokenizer.json"), encoding="utf-8"))
    out = []
    for line in open(os.path.join(SRC, "tests", "fixtures", "tokenizer", "variant-vectors.jsonl"), encoding="utf-8"):
        v = json.loads(line)
        if "pre_tokenizer" in v:
            t = dict(base, normalizer=v["normalizer"], pre_tokenizer=v["pre_tokenizer"])
            path = os.path.join(tmp, v["variant"] + ".json")
            json.dump(t, open(path, "w", encoding="utf-8"))
            out.append((v["variant"], path))
    for name in ("spm-legacy", "spm-metaspace", "spm-split"):
        out.append((name, os.path.join(SRC, "tests", "fixtures", "tokenizer", name + ".json")))
    return out


def text(tmp, name, kb):
    unit, tail = RUNS[name]
    count = max(1, kb * 1000 // len(unit.encode()))
    path = os.path.join(tmp, "%s-%d.txt" % (name, kb))
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(unit * count + tail)
    return path


def timed(moeflow, tok, path, timeout, reps):
    best = None
    for _ in range(reps):
        dt, digest = timed_once(moeflow, tok, path, timeout)
        if dt is None or digest.startswith("error"):
            return dt, digest
        best = dt if best is None else min(best, dt)
    return best, digest


def timed_once(moeflow, tok, path, timeout):
    t0 = time.monotonic()
    try:
        p = subprocess.run([moeflow, "tokenize", "--tokenizer", tok, "--file", path], capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timeout"
    dt = time.monotonic() - t0
    if p.returncode:
        return dt, "error: " + p.stderr.decode(errors="replace").strip()[:80]
    return dt, hashlib.sha256(p.stdout).hexdigest()[:12]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moeflow", required=True)
    ap.add_argument("--kb", type=int, default=100, help="the smaller text's size in kB (the larger: 4x)")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--reps", type=int, default=2, help="runs of each, the best kept")
    ap.add_argument("--only", action="append", help="this tokenizer only (repeatable)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for tname, tok in tokenizers(tmp):
            if a.only and tname not in a.only:
                continue
            for rname in RUNS:
                t1, h1 = timed(a.moeflow, tok, text(tmp, rname, a.kb), a.timeout, a.reps)
                t4, h4 = (None, "not run") if t1 is None else timed(a.moeflow, tok, text(tmp, rname, 4 * a.kb),
                                                                   a.timeout, a.reps)
                ratio = t4 / t1 if t1 and t4 else None
                flag = "superlinear" if t1 is None or t4 is None or (ratio > 6 and t1 > 0.05) else ""
                show = lambda t: "%.2f" % t if t is not None else "cut"
                print("%-14s %-24s %6s s %6s s  x%-5s %s %s %s" % (
                    tname, rname, show(t1), show(t4), "%.1f" % ratio if ratio else "-", h1, h4, flag), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
