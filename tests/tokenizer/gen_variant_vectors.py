#!/usr/bin/env python3
"""Reference vectors for the tokenizer.json kinds of other model families, on
the bundled model's vocabulary and merges:

  nfc-bytelevel  normalizer NFC + ByteLevel pre-tokenizer with its GPT-2 regex
                 (the GPT-NeoX tokenizer of OLMoE)
  qwen2          normalizer NFC + Sequence[Split(Qwen2's regex, Isolated),
                 ByteLevel(use_regex false)] (Qwen2-MoE and Qwen3-MoE)

    python3 tests/tokenizer/gen_variant_vectors.py > tests/fixtures/tokenizer/variant-vectors.jsonl

Needs a Python 3 with the `regex` module (Unicode property classes) and
unicodedata of Unicode 14.0 (the version of model/tokenizer_unicode.c).  The
byte-level BPE below is checked first against the 187 vectors that the
Hugging Face `tokenizers` library computed for the bundled tokenizer
(pycode-vectors.jsonl); the script stops if any differs.

Output: one JSON object per line.  A line with "normalizer" and
"pre_tokenizer" defines a variant (spliced into the bundled tokenizer.json by
the test); the lines after it, {"variant", "text", "ids"}, are its vectors,
with "pieces" (what the pre-tokenizer cuts the NFC'd text into) when the text
holds no added token.
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

    def plain(self, text, norm, split):
        if norm:
            text = unicodedata.normalize("NFC", text)
        return [t for p in regex.findall(split, text) for t in self.piece(p)]


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
    ]
    pool = ("abcXYZ019 _.,;:!?'\"()[]{}\t\r\n" + "\u0301\u0308\u0323\u030a\u0307" + "\u00e9\u00c5\u212b\u0958"
            + "\u1100\u1161\u11a8\uac00\u0661\u4e2d\u00a0\u3000\U0001f600\U0001d400")
    for _ in range(300):
        out.append("".join(rnd.choice(pool) for _ in range(rnd.randint(1, 40))))
    return out


def main():
    src = os.path.join(ROOT, "models", "pycode-moe-18m", "tokenizer.json")
    tok = json.load(open(src, encoding="utf-8"))
    bpe = Bpe(tok)
    ref = [json.loads(l) for l in open(os.path.join(ROOT, "tests", "fixtures", "tokenizer",
                                                    "pycode-vectors.jsonl"), encoding="utf-8")]
    bad = [r["text"] for r in ref if bpe.encode(r["text"], False, GPT2) != r["ids"]]
    if bad:
        sys.exit("the reference BPE differs from tokenizers on %d of %d vectors, e.g. %r" % (len(bad), len(ref), bad[0]))
    variants = [
        ("nfc-bytelevel", {"type": "NFC"},
         {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, GPT2),
        ("qwen2", {"type": "NFC"},
         {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": QWEN2}, "behavior": "Isolated", "invert": False},
             {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}, QWEN2),
    ]
    w = sys.stdout
    for name, norm, pre, split in variants:
        w.write(json.dumps({"variant": name, "normalizer": norm, "pre_tokenizer": pre}, ensure_ascii=False) + "\n")
        for t in texts(ref):
            v = {"variant": name, "text": t, "ids": bpe.encode(t, True, split)}
            if not any(a["content"] in t for a in bpe.added):  # the pre-tokenizer's own pieces, after NFC
                v["pieces"] = regex.findall(split, unicodedata.normalize("NFC", t))
            w.write(json.dumps(v, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
