#!/usr/bin/env python3
"""Offline optimum with and without bypass, on a routing trace (`moeflow trace` JSON Lines).

usage: min_bypass.py TRACE.jsonl [CAPACITY ...]

Belady's MIN evicts the resident expert used farthest ahead and always keeps the expert it
fetched; MIN with bypass may instead stream a fetched expert through without keeping it when its
own next use is farther than every resident's.  Prints transfers per token for MIN at C slots, and
for MIN with bypass at C - 1 slots (one slot given to streaming) and at C slots, for each capacity
(default 32 64 128).  Every expert of a token's MoE layer is needed at once."""
import json
import sys


def load(path):
    steps, tokens = [], 0
    with open(path) as f:
        n_exp = json.loads(f.readline())["experts"]
        for line in f:
            tokens += 1
            for layer, ex in enumerate(json.loads(line)["experts"]):
                steps.append([layer * n_exp + e for e in ex])
    return steps, tokens


def transfers(steps, cap, bypass):
    never = len(steps) + 1
    nxt, seen = [None] * len(steps), {}
    for i in range(len(steps) - 1, -1, -1):  # each expert's next use after step i
        nxt[i] = {e: seen.get(e, never) for e in steps[i]}
        for e in steps[i]:
            seen[e] = i
    resident, moved = {}, 0  # expert -> its next use
    for i, need in enumerate(steps):
        for e in need:
            if e in resident:
                continue
            moved += 1
            if len(resident) >= cap:
                victim = max((x for x in resident if x not in need), key=lambda x: resident[x])
                if bypass and nxt[i][e] >= resident[victim]:
                    continue  # streamed through, not kept
                del resident[victim]
            resident[e] = None
        for e in need:
            if e in resident:
                resident[e] = nxt[i][e]
    return moved


def main():
    steps, tokens = load(sys.argv[1])
    for cap in [int(c) for c in sys.argv[2:]] or [32, 64, 128]:
        print("capacity %d: MIN %.2f, MIN with bypass at %d slots %.2f, at %d slots %.2f transfers/token" % (
            cap, transfers(steps, cap, False) / tokens, cap - 1, transfers(steps, cap - 1, True) / tokens,
            cap, transfers(steps, cap, True) / tokens))


if __name__ == "__main__":
    main()
