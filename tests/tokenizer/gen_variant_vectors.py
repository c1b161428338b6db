#!/usr/bin/env python3
"""Reference vectors for the tokenizer.json kinds of other model families, on
the bundled model's vocabulary and merges:

  nfc-bytelevel  normalizer NFC + ByteLevel pre-tokenizer with its GPT-2 regex
                 (the GPT-NeoX tokenizer of OLMoE)
  qwen2          normalizer NFC + Sequence[Split(Qwen2's regex, Isolated),
                 ByteLevel(use_regex false)] (Qwen2-MoE and Qwen3-MoE)
  qwen2-regex    the same regex in a group, which the tokenizer runs on its
                 general regex matcher instead of the hand-written one
  gpt2-regex     GPT-2's regex as a Split, on the general matcher
  deepseek-v3    normalizer Sequence[] + Sequence[Split(\p{N}{1,3}),
                 Split(CJK runs), Split(words, punctuation, spaces),
                 ByteLevel(use_regex false)] (DeepSeek-V3's tokenizer.json)
  deepseek-llm   Sequence[] + six Splits, one ending in a line anchor ($)
                 (DeepSeek-LLM's and DeepSeek-V2's tokenizer.json)
  cl100k         Split(the cl100k / Llama-3 regex: numbers of 1-3 digits)
  o200k          Split(the o200k regex: letter runs by case and marks; its
                 first optional prefix possessive, ?+, as some files write it)

    python3 tests/tokenizer/gen_variant_vectors.py > tests/fixtures/tokenizer/variant-vectors.jsonl

Needs a Python 3 with the `regex` module (Unicode property classes) and
unicodedata of Unicode 14.0 (the version of model/tokenizer_unicode.c).  The
byte-level BPE below is checked first against the 187 vectors that the
Hugging Face `tokenizers` library computed for the bundled tokenizer
(pycode-vectors.jsonl); the script stops if any differs.

Each Split cuts every piece of the one before it into its matches and the
text between them ("Isolated"), as the Hugging Face library does.

Output: one JSON object per line.  A line with "normalizer" and
"pre_tokenizer" defines a variant (spliced into the bundled tokenizer.json by
the test); the lines after it, {"variant", "text", "ids"}, are its vectors,
with "pieces" (what the pre-tokenizer cuts the text, NFC'd when the variant
normalizes, into) when the text holds no added token.
"""
import json
import os
import random
import sys
import unicodedata

import regex

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
         r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# DeepSeek-V3's three Splits as its tokenizer.json holds them (the third with
# a literal CR and LF in its first class)
DEEPSEEK_V3 = [
    r"""\p{N}{1,3}""",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^""" + "\r\n" +
    r"""\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[""" + "\r\n" + r"""]*|\s*[""" + "\r\n" +
    r"""]+|\s+(?!\S)|\s+""",
]
# DeepSeek-LLM's and DeepSeek-V2's six Splits (line breaks alone; Latin, Greek, Cyrillic and other cased
# letters in ranges; ASCII and full-width punctuation; spaces at a line's end; CJK and Hangul runs;
# digit runs), as llama.cpp lists them for its deepseek-llm pre-tokenizer type
DEEPSEEK_LLM = [
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe"
    "\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3"
    "\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06"
    "\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
]
CL100K = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
          r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
O200K = (r"""[^\r\n\p{L}\p{N}]?+[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
         r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"""
         r"""[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"""
         r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def split_isolated(patterns, text):
    """Each pattern cuts every piece of the one before into its matches and
    the gaps between them."""
    pieces = [text]
    for pat in patterns:
        out = []
        for p in pieces:
            done = 0
            for m in regex.finditer(pat, p, regex.MULTILINE):  # Oniguruma's ^ and $ hold at line breaks
                out += [p[done:m.start()]] if m.start() > done else []
                out.append(m.group())
                done = m.end()
            out += [p[done:]] if done < len(p) else []
        pieces = out
    return pieces


def bytes_to_unicode():
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    m, n = {}, 0
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(256 + n)
            n += 1
    return m


class Bpe:
    def __init__(self, tok):
        model = tok["model"]
        self.vocab = model["vocab"]
        merges = model["merges"]
        self.rank = {}
        for r, mg in enumerate(merges):
            a, b = mg if isinstance(mg, list) else mg.split(" ", 1)
            self.rank.setdefault((a, b), r)
        self.byte = bytes_to_unicode()
        self.added = sorted(tok.get("added_tokens", []), key=lambda a: -len(a["content"]))

    def piece(self, text):
        syms = [self.byte[b] for b in text.encode("utf-8")]
        while len(syms) > 1:
            best = None
            for i in range(len(syms) - 1):
                r = self.rank.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            syms[i:i + 2] = [syms[i] + syms[i + 1]]
        return [self.vocab[s] for s in syms]

    def encode(self, text, norm, split):
        """Added tokens (none of the bundled ones is normalized) split the raw
        text leftmost-longest; each gap is normalized, pre-tokenized and BPE'd."""
        out, i, done = [], 0, 0
        while i < len(text):
            hit = next((a for a in self.added if text.startswith(a["content"], i)), None)
            if hit is None:
                i += 1
                continue
            out += self.plain(text[done:i], norm, split)
            out.append(hit["id"])
            i += len(hit["content"])
            done = i
        return out + self.plain(text[done:], norm, split)

    def plain(self, text, norm, splits):
        if norm:
            text = unicodedata.normalize("NFC", text)
        return [t for p in split_isolated(splits, text) for t in self.piece(p)]


def texts(reference):
    rnd = random.Random(20261129)
    # the first 4 Python slices and every short edge case of the reference set
    out = [r["text"] for i, r in enumerate(reference) if i < 4 or len(r["text"]) < 200]
    out += [
        "I'M here, they'Re not; WE'LL see. It's 'S'", "don't DON'T Don'T 'd'D",
        "x.append(y)\n_self._x = (a, b)", "\tfoo\t\tbar \tbaz", "a\r\n\r\n  b", "  \n\n  x", "end  \n  ",
        "1234567 abc123def 3.14159 v2.0", "!!!\n\n??\r\n--\n", " ?!!!\n\n", "e\u0301t\u00e9 A\u030a \u212b \u2126",
        "\u1100\u1161\u11a8 \uac00\u11a8 \u1112\u1161\u11ab", "\u0958 \u0344 \uf900 \ufb01", "q\u0307\u0323 s\u0323\u0307",
        "\u00c5ngstr\u00f6m\u0308 na\u0308ive", "\u05e9\u05c1\u05b8 \u0627\u0653", "\U0001d400\U0001d41a 12\u0661\u0662",
        "tab\there\x0bvt\x0cff", "\u3000\u3000full\u3000width", "\u00a0nbsp\u00a0 \u2028ls",
        "<|endoftext|>caf\u0065\u0301<|endoftext|>", "", " ", "\n", "'", "''s", "a'", "'\u0301s",
        "\u4e2d\u6587\u5b57123\u3042\u30a2\u30fc\u3005\uac00 \u9fa5\u9fa6", "#include <stdio.h>\n.append x.Y",
        "\u0939\u093f\u0928\u094d\u0926\u0940 \u0915\u093e", "CamelCaseWord HTTPServer iPhone \u01c5ungla",
        "1234567 \uff11\uff12\uff13\uff14 \u0661\u0662\u0663\u0664 \u00bd\u2167", "x = a+b/c*-d; // \u2192 \u20ac5",
        "path/to/file\r\n/usr  \U0001f600\U0001f600 ok", "'S's 'LL 'Ve \u017ft", " \ufb01ne \u02b0h",
        "end of line   \nnext  \r\n\u03b1\u03b2\u03b3 \u0416\u0436 \uff21\uff22\uff01 \u3001\u3002 \ud55c\uad6d\uc5b4 12345  ",
    ]
    pool = ("abcXYZ019 _.,;:!?'\"()[]{}\t\r\n" + "\u0301\u0308\u0323\u030a\u0307" + "\u00e9\u00c5\u212b\u0958"
            + "\u1100\u1161\u11a8\uac00\u0661\u4e2d\u00a0\u3000\U0001f600\U0001d400"
            + "#$+/\\-\u9fa5\u3042\u30a2\u30fc\u3005\u0939\u093f\u094d\u01c5\u02b0\u00bd\u2167\u20ac\u2192\u017f")
    for _ in range(300):
        out.append("".join(rnd.choice(pool) for _ in range(rnd.randint(1, 40))))
    return out


def main():
    src = os.path.join(ROOT, "models", "pycode-moe-18m", "tokenizer.json")
    tok = json.load(open(src, encoding="utf-8"))
    bpe = Bpe(tok)
    ref = [json.loads(l) for l in open(os.path.join(ROOT, "tests", "fixtures", "tokenizer",
                                                    "pycode-vectors.jsonl"), encoding="utf-8")]
    bad = [r["text"] for r in ref if bpe.encode(r["text"], False, [GPT2]) != r["ids"]]
    if bad:
        sys.exit("the reference BPE differs from tokenizers on %d of %d vectors, e.g. %r" % (len(bad), len(ref), bad[0]))
    def byte_level(splits):
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False} for r in splits] + [
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}

    nfc = {"type": "NFC"}
    variants = [
        ("nfc-bytelevel", nfc,
         {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, [GPT2]),
        ("qwen2", nfc, byte_level([QWEN2]), [QWEN2]),
        ("qwen2-regex", nfc, byte_level(["(?:" + QWEN2 + ")"]), [QWEN2]),
        ("gpt2-regex", nfc, byte_level([GPT2]), [GPT2]),
        ("deepseek-v3", {"type": "Sequence", "normalizers": []}, byte_level(DEEPSEEK_V3), DEEPSEEK_V3),
        ("deepseek-llm", {"type": "Sequence", "normalizers": []}, byte_level(DEEPSEEK_LLM), DEEPSEEK_LLM),
        ("cl100k", nfc, byte_level([CL100K]), [CL100K]),
        ("o200k", nfc, byte_level([O200K]), [O200K]),
    ]
    check_categories("".join(texts(ref)))
    w = sys.stdout
    for name, norm, pre, splits in variants:
        w.write(json.dumps({"variant": name, "normalizer": norm, "pre_tokenizer": pre}, ensure_ascii=False) + "\n")
        does_nfc = norm.get("type") == "NFC"
        for t in texts(ref):
            v = {"variant": name, "text": t, "ids": bpe.encode(t, does_nfc, splits)}
            if not any(a["content"] in t for a in bpe.added):  # the pre-tokenizer's own pieces
                v["pieces"] = split_isolated(splits, unicodedata.normalize("NFC", t) if does_nfc else t)
            w.write(json.dumps(v, ensure_ascii=False) + "\n")


def check_categories(text):
    """The regex module's Unicode tables may be newer than unicodedata's (the
    tokenizer's); every character of the texts must read the same in both."""
    for c in sorted(set(text)):
        gc = unicodedata.category(c)
        for k in ("L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "N", "P", "S"):
            if bool(regex.match(r"\p{%s}" % k, c)) != gc.startswith(k):
                sys.exit("U+%04X: category %s in unicodedata, not so for \\p{%s} in regex" % (ord(c), gc, k))

if __name__ == "__main__":
    main()
