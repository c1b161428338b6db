#!/usr/bin/env python3
"""Writes three small SentencePiece-style BPE tokenizer.json files, the kind
Mixtral and Llama publish, for the tokenizer tests:

  spm-legacy.json     normalizer Sequence[Prepend("▁"), Replace(" " -> "▁")],
                      no pre-tokenizer, byte fallback, decoder
                      Sequence[Replace("▁" -> " "), ByteFallback, Fuse, Strip]
                      (Mixtral-8x7B's and Llama 2's layout)
  spm-metaspace.json  no normalizer, pre-tokenizer Metaspace(prepend_scheme
                      "first", split false), the same decoder (the layout
                      newer conversions write)
  spm-split.json      Metaspace(prepend_scheme "always", split true) as both
                      pre-tokenizer and decoder, no byte fallback: characters
                      outside the vocabulary become <unk>, not fused
  spm-tiny.json       spm-legacy.json's layout with 320 tokens (41 characters,
                      20 merges), the vocabulary size of the tiny Mixtral
                      checkpoint in tests/fixtures/hf-tiny/mixtral

    python3 tests/tokenizer/gen_spm_tokenizers.py

The vocabulary and merges are trained here (plain BPE over the first 96 kB of
bench/data/pycode/train.txt, 700 merges; ids 0-2 <unk> <s> </s>, 3-258 the
byte tokens <0x00>..<0xFF>, then the characters seen at least 3 times, then
one token per merge), so the files belong to this project.  The reference ids
come from the Hugging Face library: tests/tokenizer/gen_spm_vectors.js.
"""
import collections
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
SP = "\u2581"
N_MERGES = 700


def train(text, n_merges=N_MERGES, max_alphabet=None):
    chars = collections.Counter(text.replace(" ", SP))
    alphabet = sorted((c for c, n in chars.items() if n >= 3 and c != " "), key=lambda c: (-chars[c], c))
    alphabet = alphabet[:max_alphabet]
    words = collections.Counter()
    for line in text.split("\n"):
        for i, w in enumerate(line.split(" ")):
            if w or i:
                words[tuple(SP + w)] += 1
    words = {w: n for w, n in words.items() if all(c in alphabet for c in w)}
    merges = []
    vocab_new = []
    known = set(alphabet)
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), _n = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append((a, b))
        if a + b not in known:
            known.add(a + b)
            vocab_new.append(a + b)
        merged = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for tok in alphabet + vocab_new:
        vocab.setdefault(tok, len(vocab))
    return vocab, merges


def added():
    return [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]


def bos_template():
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}


def fallback_decoder():
    return {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": SP}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def model(vocab, merges, byte_fallback):
    return {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": byte_fallback, "byte_fallback": byte_fallback,
            "vocab": vocab, "merges": ["%s %s" % m for m in merges]}


def main():
    with open(os.path.join(ROOT, "bench", "data", "pycode", "train.txt"), encoding="utf-8") as f:
        text = f.read()[:96 * 1024]
    vocab, merges = train(text)
    legacy_normalizer = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": SP}, {"type": "Replace", "pattern": {"String": " "}, "content": SP}]}
    files = {
        "spm-legacy.json": {
            "normalizer": legacy_normalizer, "pre_tokenizer": None, "decoder": fallback_decoder(),
            "byte_fallback": True},
        "spm-metaspace.json": {
            "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": SP, "prepend_scheme": "first", "split": False},
            "decoder": fallback_decoder(), "byte_fallback": True},
        "spm-split.json": {
            "normalizer": None,
            "pre_tokenizer": {"type": "Metaspace", "replacement": SP, "prepend_scheme": "always", "split": True},
            "decoder": {"type": "Metaspace", "replacement": SP, "prepend_scheme": "always", "split": True},
            "byte_fallback": False},
        "spm-tiny.json": {
            "normalizer": legacy_normalizer, "pre_tokenizer": None, "decoder": fallback_decoder(),
            "byte_fallback": True, "vocab": train(text, 20, 41)},
    }
    for name, f in files.items():
        v, m = f.get("vocab", (vocab, merges))
        tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added(),
               "normalizer": f["normalizer"], "pre_tokenizer": f["pre_tokenizer"],
               "post_processor": bos_template(), "decoder": f["decoder"],
               "model": model(v, m, f["byte_fallback"])}
        with open(os.path.join(OUT, name), "w", encoding="utf-8") as out:
            json.dump(tok, out, ensure_ascii=False, indent=1)
            out.write("\n")
        print("wrote %s: %d tokens, %d merges" % (name, len(v), len(m)))


if __name__ == "__main__":
    main()
