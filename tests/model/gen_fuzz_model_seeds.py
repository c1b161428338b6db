#!/usr/bin/env python3
"""Writes tests/model/corpus_model/: seeds for fuzz_model (a model directory as one input, its files
ended by "\\n@@FILE@@\\n"; see fuzz_model.c).  A Mixtral of one layer, hidden 8, two experts, BF16
zeros: in one model.safetensors, in two shards under an index, and indexes that are refused (a shard
outside the directory, a tensor mapped to a shard without it, a missing shard)."""
import json
import os
import struct

SEP = b"\n@@FILE@@\n"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus_model")

CONFIG = {
    "model_type": "mixtral", "num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2,
    "num_key_value_heads": 1, "vocab_size": 16, "intermediate_size": 8, "num_local_experts": 2,
    "num_experts_per_tok": 1, "max_position_embeddings": 64,
}


def tensors():
    t = [("model.embed_tokens.weight", [16, 8]), ("model.norm.weight", [8]), ("lm_head.weight", [16, 8])]
    p = "model.layers.0."
    t += [(p + "input_layernorm.weight", [8]), (p + "post_attention_layernorm.weight", [8]),
          (p + "self_attn.q_proj.weight", [8, 8]), (p + "self_attn.k_proj.weight", [4, 8]),
          (p + "self_attn.v_proj.weight", [4, 8]), (p + "self_attn.o_proj.weight", [8, 8]),
          (p + "block_sparse_moe.gate.weight", [2, 8])]
    for e in range(2):
        for w in ("w1", "w3", "w2"):
            t.append((p + "block_sparse_moe.experts.%d.%s.weight" % (e, w), [8, 8]))
    return t


def safetensors(ts):
    header, off = {}, 0
    for name, shape in ts:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(off)


def write(name, parts):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(SEP.join(parts))


def main():
    os.makedirs(OUT, exist_ok=True)
    cfg = json.dumps(CONFIG).encode()
    ts = tensors()
    write("single.bin", [cfg, safetensors(ts)])
    a, b = ts[:7], ts[7:]
    wmap = {n: "a.safetensors" for n, _ in a}
    wmap.update({n: "b.safetensors" for n, _ in b})
    index = lambda m: json.dumps({"metadata": {}, "weight_map": m}).encode()
    write("sharded.bin", [cfg, index(wmap), safetensors(a), safetensors(b)])
    bad = dict(wmap, **{a[0][0]: "../a.safetensors"})
    write("index_outside_dir.bin", [cfg, index(bad), safetensors(a), safetensors(b)])
    bad = dict(wmap, **{a[0][0]: "b.safetensors"})
    write("index_wrong_shard.bin", [cfg, index(bad), safetensors(a), safetensors(b)])
    bad = dict(wmap, **{a[0][0]: "c.safetensors"})
    write("index_missing_shard.bin", [cfg, index(bad), safetensors(a), safetensors(b)])


if __name__ == "__main__":
    main()
