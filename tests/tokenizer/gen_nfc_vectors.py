#!/usr/bin/python3
"""Generate the NFC normalizer's reference data from Python's unicodedata
(run with /usr/bin/python3: Unicode 14.0.0, the version of
model/tokenizer_nfc_tables.c):

    /usr/bin/python3 tests/tokenizer/gen_nfc_vectors.py

writes, reproducibly (fixed seed):

  tests/fixtures/tokenizer/nfc-vectors.jsonl
      {"in": ..., "nfc": ...} per line: random strings mixing ASCII, Latin
      letters with several combining marks in random order (equal and
      different classes, long runs too), precomposed letters, Hangul syllables
      and conjoining jamo, singletons, composition exclusions, non-starter
      decompositions, composition pairs of Indic, Kana and other scripts, CJK
      compatibility ideographs and code points from every plane.

  tests/fixtures/tokenizer/nfc-codepoints.txt
      per-code-point data for an exhaustive check over U+0000..U+10FFFF:
        c LO HI CCC        the code points LO..HI have combining class CCC
                           (every code point not listed has class 0)
        n CP NFC...        NFC(CP) when it is not CP itself
        p CP NFC...        NFC(CP U+0334) when it is not NFC(CP) U+0334
      (hex code points).  U+0334 (class 1, composes with nothing) makes every
      code point go through decomposition and recomposition.
"""
import json
import os
import random
import sys
import unicodedata

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
PROBE = 0x334
N_RANDOM = 3200


def code_points():
    return (cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)


def nfc(s):
    return unicodedata.normalize("NFC", s)


def pools():
    marks, precomposed, excluded, seconds_pairs = [], [], [], []
    for cp in code_points():
        c = chr(cp)
        if unicodedata.combining(c):
            marks.append(cp)
        d = unicodedata.decomposition(c)
        if d and not d.startswith("<") and not 0xAC00 <= cp <= 0xD7A3:
            parts = [int(x, 16) for x in d.split()]
            if nfc(c) == c:
                precomposed.append(cp)
                if unicodedata.combining(chr(parts[1])) == 0:
                    seconds_pairs.append(parts)   # starter + starter pairs (Indic, Kana-like)
            else:
                excluded.append(cp)
    return marks, precomposed, excluded, seconds_pairs


def main():
    rnd = random.Random(20240615)
    marks, precomposed, excluded, starter_pairs = pools()
    by_class = {}
    for m in marks:
        by_class.setdefault(unicodedata.combining(chr(m)), []).append(m)
    common_marks = list(range(0x300, 0x370)) + [0x5B0, 0x5B4, 0x5BC, 0x5C1, 0x5C2, 0x64B, 0x650, 0x651,
                                                 0x670, 0x93C, 0x94D, 0x9BC, 0x9CD, 0x3099, 0x309A,
                                                 0x302A, 0x302B, 0x302C, 0x302D, 0x302E, 0x302F,
                                                 0x1DC0, 0x1DCE, 0x20D0, 0x20D2, 0x20E3, 0xF71, 0xF72,
                                                 0xF74, 0xF80, 0x1D165, 0x1D167, 0x1D16D]
    latin = [ord(c) for c in "aeiouAEIOUcnsyzgkhwxCNSYZGKHWX"] + [0x3B1, 0x3B5, 0x3B7, 0x3B9, 0x3BF,
                                                                     0x3C5, 0x3C9, 0x391, 0x399, 0x3A9,
                                                                     0x430, 0x435, 0x438, 0x433, 0x3C1]
    singletons = [0x212B, 0x2126, 0x212A, 0x340, 0x341, 0x343, 0x374, 0x37E, 0x387, 0x1F71, 0x1FBB,
                  0x1FEE, 0x2000, 0x2001, 0x2329, 0x232A]
    nonstarter_dec = [0x344, 0xF73, 0xF75, 0xF81]
    cjk_compat = list(range(0xF900, 0xFADA)) + list(range(0x2F800, 0x2FA1E))
    kana = [0x304B, 0x304F, 0x3055, 0x306F, 0x30AB, 0x30CF, 0x30A6, 0x3046, 0x309D, 0x30FD]
    ascii_chars = [chr(c) for c in range(0x20, 0x7F)] + ["\n", "\t"]

    def any_cp():
        plane = rnd.choice([0, 0, 0, 1, 1, 2, 3, 14, 15, 16])
        while True:
            cp = plane << 16 | rnd.randrange(0x10000)
            if not 0xD800 <= cp <= 0xDFFF:
                return chr(cp)

    def mark_run():
        n = rnd.choice([1, 1, 2, 2, 3, 3, 4, 5, 6])
        out = []
        for _ in range(n):
            r = rnd.random()
            if r < 0.6:
                out.append(rnd.choice(common_marks))
            elif r < 0.8:
                out.append(rnd.choice(marks))
            else:   # several marks of one class: their order must be kept
                cls = rnd.choice(sorted(by_class))
                out.extend(rnd.choice(by_class[cls]) for _ in range(rnd.randint(1, 3)))
        return "".join(map(chr, out))

    def hangul():
        r = rnd.random()
        if r < 0.3:
            return chr(0xAC00 + rnd.randrange(11172))
        if r < 0.5:   # LV syllable + T jamo
            return chr(0xAC00 + 28 * rnd.randrange(399)) + chr(0x11A8 + rnd.randrange(27))
        if r < 0.8:   # L V (T)
            s = chr(0x1100 + rnd.randrange(19)) + chr(0x1161 + rnd.randrange(21))
            if rnd.random() < 0.5:
                s += chr(0x11A7 + rnd.randrange(28))   # U+11A7 is not a T jamo: no LVT
            return s
        # stray jamo, including the ones outside the composable ranges
        return "".join(chr(rnd.choice([0x1100 + rnd.randrange(0x100), 0xA960 + rnd.randrange(32),
                                       0xD7B0 + rnd.randrange(76)])) for _ in range(rnd.randint(1, 3)))

    def piece():
        r = rnd.random()
        if r < 0.20:
            return "".join(rnd.choice(ascii_chars) for _ in range(rnd.randint(1, 6)))
        if r < 0.40:
            return chr(rnd.choice(latin)) + mark_run()
        if r < 0.50:
            return chr(rnd.choice(precomposed)) + (mark_run() if rnd.random() < 0.5 else "")
        if r < 0.58:
            return hangul()
        if r < 0.63:
            return chr(rnd.choice(singletons)) + (mark_run() if rnd.random() < 0.3 else "")
        if r < 0.68:
            return chr(rnd.choice(excluded)) + (mark_run() if rnd.random() < 0.3 else "")
        if r < 0.71:
            return chr(rnd.choice(latin)) + chr(rnd.choice(nonstarter_dec)) + mark_run()
        if r < 0.74:
            return chr(rnd.choice(cjk_compat))
        if r < 0.80:
            a, b = rnd.choice(starter_pairs)
            return chr(a) + (mark_run() if rnd.random() < 0.3 else "") + chr(b)
        if r < 0.84:
            return chr(rnd.choice(kana)) + chr(rnd.choice([0x3099, 0x309A]))
        if r < 0.88:
            return mark_run()   # marks with no starter before them
        return "".join(any_cp() for _ in range(rnd.randint(1, 3)))

    cases = ["", "a", "\u00e9", "e\u0301", "\u212b", "\u0958", "\u0344", "\u1100\u1161\u11a8",
             "\uac00\u11a8", "\u0041\u030a\u0301", "a\u0323\u0302", "\u1e69\u0323", "\u0071\u0307\u0323",
             "\u0915\u093c", "\u09c7\u09be", "\u304b\u3099", "\U0001d15e", "\u0000a\u0301"]
    for _ in range(N_RANDOM):
        cases.append("".join(piece() for _ in range(rnd.randint(1, 5))))
    for _ in range(40):   # long runs of marks (the reordering of long runs takes another path)
        cases.append(chr(rnd.choice(latin)) + "".join(chr(rnd.choice(common_marks + marks))
                                                      for _ in range(rnd.randint(30, 90))))
    for _ in range(40):   # everything in random order, long
        cases.append("".join(piece() for _ in range(rnd.randint(15, 30))))

    with open(os.path.join(OUT_DIR, "nfc-vectors.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for s in cases:
            f.write(json.dumps({"in": s, "nfc": nfc(s)}, ensure_ascii=False) + "\n")

    runs = []
    for cp in marks:
        k = unicodedata.combining(chr(cp))
        if runs and runs[-1][1] == cp - 1 and runs[-1][2] == k:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp, k])

    def hexs(s):
        return " ".join("%04X" % ord(c) for c in s)

    with open(os.path.join(OUT_DIR, "nfc-codepoints.txt"), "w", encoding="ascii", newline="\n") as f:
        f.write("# Generated by tests/tokenizer/gen_nfc_vectors.py from Python unicodedata (Unicode %s).\n"
                % unicodedata.unidata_version)
        f.write("# c LO HI CCC: combining classes; n CP NFC...: NFC(CP) != CP; "
                "p CP NFC...: NFC(CP U+%04X) != NFC(CP) U+%04X\n" % (PROBE, PROBE))
        for lo, hi, k in runs:
            f.write("c %04X %04X %d\n" % (lo, hi, k))
        for cp in code_points():
            c = chr(cp)
            if nfc(c) != c:
                f.write("n %04X %s\n" % (cp, hexs(nfc(c))))
        for cp in code_points():
            c = chr(cp)
            if nfc(c + chr(PROBE)) != nfc(c) + chr(PROBE):
                f.write("p %04X %s\n" % (cp, hexs(nfc(c + chr(PROBE)))))
    sys.stderr.write("gen_nfc_vectors: %d vectors\n" % len(cases))


if __name__ == "__main__":
    main()
