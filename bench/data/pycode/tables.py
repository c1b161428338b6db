#!/usr/bin/python3
"""Markdown tables from the output of measure.sh (stdin)."""
import json
import sys

evals, inst, tl = {}, [], []
cmd = None
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("$ "):
        cmd = line[2:]
        continue
    if not line.startswith("{"):
        continue
    o = json.loads(line)
    if "recall_at_k" in o:
        evals[o["predictor"]] = o
    elif "stall_s" in o:
        tl.append(o)
    else:
        inst.append(o)


def fmt(v):
    return "-" if v is None else f"{v:.3f}"


n_moe = max((e["moe_layers"] for e in evals.values()), default=0)
print("### recall@4 per MoE layer\n")
print("| predictor | distance | " + " | ".join(f"L{i}" for i in range(n_moe)) + " |")
print("|---|---|" + "---|" * n_moe)
for name, e in evals.items():
    for d, vals in e["recall_at_k"].items():
        print(f"| {name} | {d} | " + " | ".join(fmt(v) for v in vals) + " |")

print("\n### cache replay, no timeline\n")
print("| capacity | predictor | policy | hit rate | transfers/token | useful prefetches | Belady hit rate | Belady transfers/token |")
print("|---|---|---|---|---|---|---|---|")
for o in inst:
    frac = o["capacity"] / o["slots_total"]
    print(f"| {frac*100:.1f} % ({o['capacity']}) | {o['predictor']} | {o['policy']} | {o['hit_rate']:.3f} | "
          f"{o['transfers_per_token']:.2f} | {o['prefetch_useful_frac']:.2f} | {o['belady']['hit_rate']:.3f} | "
          f"{o['belady']['transfers_per_token']:.2f} |")

print("\n### timeline at the H100 ratio\n")
print("| capacity | predictor | policy | hit rate | transfers/token | stall ms/token | Belady (on demand) stall ms/token |")
print("|---|---|---|---|---|---|---|")
for o in tl:
    frac = o["capacity"] / o["slots_total"]
    t = o["tokens"]
    print(f"| {frac*100:.1f} % | {o['predictor']} | {o['policy']} | {o['hit_rate']:.3f} | "
          f"{o['transfers_per_token']:.2f} | {o['stall_s']*1e3/t:.1f} | {o['belady']['stall_s']*1e3/t:.1f} |")
