#!/usr/bin/env python3
"""Reference matches for the Split pre-tokenizer regex matcher
(model/tokenizer_regex.c): random patterns of the syntax it takes, on random
texts, matched by Python's `regex` module (a backtracking engine with the
leftmost-first semantics of Oniguruma, which the Hugging Face library uses;
compiled MULTILINE, since Oniguruma's ^ and $ hold at line breaks too).

    python3 tests/tokenizer/gen_regex_vectors.py > tests/fixtures/tokenizer/regex-vectors.jsonl

Patterns are built so that none can match the empty text (the matcher
refuses those), and groups are repeated a bounded number of times: loops
inside loops backtrack exponentially in any backtracking engine, and the
matcher stops them at its step budget (real tokenizer patterns have none).  Characters
are chosen where `regex` and unicodedata 14 (the matcher's tables) agree, and
\\w is written as the class the matcher gives it ([\\p{L}\\p{M}\\p{Nd}\\p{Pc}];
`regex` reads \\w as Alphabetic, which holds a few symbols more).

Output: one JSON object per line, {"pattern", "text", "spans"}: the matches
found one after another from the start, each [start, end) in UTF-8 bytes.
"""
import json
import random
import sys
import unicodedata

import regex

ALPHABET = "abcABCxyz019 _\t\n\r.,;:'-/#\u00e9\u0301\u4e2d\u3042\u0661\u00bd\u20ac\u2192\u00a0\U0001f600S\u017fk\u212a"
LITERALS = "abcAxz09 _.,'-#\u00e9\u4e2d\n"
CLASSES = [
    r"\d", r"\D", r"\s", r"\S", r"\p{L}", r"\p{N}", r"\p{P}", r"\p{S}", r"\p{M}", r"\p{Lu}", r"\p{Ll}",
    r"\P{L}", r"\p{^N}", r"[abc]", r"[^abc]", r"[a-z0-9]", r"[^\s\p{L}]", r"[\p{L}\p{M}]", r"[\r\n]",
    r"[^\r\n\p{L}\p{N}]", r"[.\-#]", r"[\u4e00-\u9fa5\u3040-\u309f]", r"\x41", r"\x{e9}", r"\u00e9", r".",
    r"[\p{Lu}\p{Lt}]", r"[^\p{P}\p{S}\s]", r"[\w]",
]
WORD = r"[\p{L}\p{M}\p{Nd}\p{Pc}]"
ICASE_WORDS = ["'s", "'t", "'re", "ll", "k", "ab", "S"]


def atom(rnd, depth):
    """A pattern that cannot match empty, and whether it is one class."""
    r = rnd.random()
    if r < 0.06:  # an anchor before a character (^ and $ at line breaks too: MULTILINE below)
        c = rnd.choice(LITERALS).replace("\n", r"\n")
        return rnd.choice(["^", r"\A"]) + c if rnd.random() < 0.5 else c + "$", False
    if depth < 2 and r < 0.15:
        return "(?:%s)" % alternation(rnd, depth + 1), False
    if depth < 2 and r < 0.2:
        return "(?i:%s)" % "|".join(rnd.sample(ICASE_WORDS, rnd.randint(1, 3))), False
    if r < 0.45:
        c = rnd.choice(LITERALS)
        return (regex.escape(c) if c in ".-#'" else c.replace("\n", r"\n")), True
    c = rnd.choice(CLASSES + [r"\w", r"\W"])
    if c == r"\w":
        c = WORD
    elif c == r"\W":
        c = WORD.replace("[", "[^", 1)
    elif c == r"[\w]":
        c = WORD
    return c, True


def piece(rnd, depth, mandatory):
    """An atom with a quantifier; mandatory: it cannot match empty."""
    a, single = atom(rnd, depth)
    q = rnd.choice(["", "", "+", "{1,3}", "{2}", "{1,}", "+?", "{1,2}?"] if mandatory else
                   ["", "?", "*", "+", "{0,2}", "{2,3}", "??", "*?", "+?", "{,2}"])
    if not single and ("*" in q or "+" in q or ",}" in q):
        q = "{1,2}" if mandatory else "?"  # a group repeated without bound: nested loops backtrack exponentially
    if single and q in ("?", "*", "+") and rnd.random() < 0.3:
        q += "+"  # possessive
    return a + q


def sequence(rnd, depth):
    n = rnd.randint(1, 4)
    must = rnd.randrange(n)
    out = [piece(rnd, depth, i == must) for i in range(n)]
    if depth < 2 and rnd.random() < 0.25:  # a lookahead somewhere
        look = "(?%s%s)" % (rnd.choice("=!"), alternation(rnd, depth + 1))
        out.insert(rnd.randint(0, n), look)
    return "".join(out)


def alternation(rnd, depth):
    return "|".join(sequence(rnd, depth) for _ in range(rnd.randint(1, 3)))


def byte_offset(text, i):
    return len(text[:i].encode("utf-8"))


def check_categories(text):
    for c in set(text):
        gc = unicodedata.category(c)
        for k in ("L", "Lu", "Ll", "Lt", "M", "N", "Nd", "P", "S"):
            if bool(regex.match(r"\p{%s}" % k, c)) != gc.startswith(k):
                sys.exit("U+%04X: the regex module and unicodedata disagree on \\p{%s}" % (ord(c), k))


def main():
    rnd = random.Random(20261129)
    check_categories(ALPHABET)
    w = sys.stdout
    n = 0
    while n < 400:
        pat = alternation(rnd, 0)
        try:
            cre = regex.compile(pat, regex.MULTILINE)
        except regex.error:
            continue
        for _ in range(4):
            text = "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 30)))
            spans = []
            for m in cre.finditer(text):
                if m.end() == m.start():
                    sys.exit("pattern %r matched empty text in %r" % (pat, text))
                spans.append([byte_offset(text, m.start()), byte_offset(text, m.end())])
            w.write(json.dumps({"pattern": pat, "text": text, "spans": spans}, ensure_ascii=False) + "\n")
        n += 1


if __name__ == "__main__":
    main()
