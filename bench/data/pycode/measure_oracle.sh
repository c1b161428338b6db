#!/usr/bin/env bash
# docs/results.md (section 4, "What the targets would take"): the shipped predictor with part of the
# true routing given on top (replay's --oracle-* options), at 25 % capacity on the timeline at the H100
# ratio; prints a markdown table.
# Usage: bench/data/pycode/measure_oracle.sh BUILD_DIR [TEXT] [TOKENS]   (from the repository root)
set -euo pipefail
B=${1:?build dir}
T=${2:-bench/data/pycode/eval.txt}
N=${3:-2048}
M="$B/server/moeflow"
echo "| truth given (score 1) | prefetching | transfers/token | x Belady | stall ms/token | x below LRU's |"
echo "|---|---|---|---|---|---|"
lru=$("$M" replay --text "$T" --max-tokens "$N" --capacity-frac 0.25 --predictor none --policy lru \
        --link-gbps 55 --expert-bytes 352321536 --json |
      /usr/bin/python3 -c 'import json, sys; o = json.load(sys.stdin); print(1000 * o["stall_s"] / o["tokens"])')
row() {
  local what=$1 pf=$2
  shift 2
  local opt=()
  [ "$pf" = no ] && opt=(--no-prefetch)
  "$M" replay --text "$T" --max-tokens "$N" --capacity-frac 0.25 --predictor path+gate --policy predicted \
    "${opt[@]}" "$@" --link-gbps 55 --expert-bytes 352321536 --json |
    /usr/bin/python3 -c '
import json, sys
o = json.load(sys.stdin)
what, pf, lru = sys.argv[1], sys.argv[2], float(sys.argv[3])
t, b, stall = o["transfers_per_token"], o["belady"]["transfers_per_token"], 1000 * o["stall_s"] / o["tokens"]
print("| %s | %s | %.2f | %.3f | %.1f | %.2f |" % (what, pf, t, t / b, stall, lru / stall))
' "$what" "$pf" "$lru"
}
for pf in no yes; do
  row "none (the shipped predictor alone)" $pf
  row "this token's, at the step's start" $pf --oracle-horizon 0 --oracle-keep
  row "the next token's, at the step's start" $pf --oracle-horizon 1 --oracle-keep --oracle-later-only
  for l in 0 3 5; do
    row "the next token's, after MoE layer $l of the step" $pf --oracle-horizon 1 --oracle-keep --oracle-later-only \
      --oracle-reveal-layer $l
  done
  row "this token's at the start, the next token's after MoE layer 0" $pf --oracle-horizon 1 --oracle-keep \
    --oracle-reveal-layer 0
  row "this token's and the next token's, at the step's start" $pf --oracle-horizon 1 --oracle-keep
  row "this token's and the next 2 tokens', at the step's start" $pf --oracle-horizon 2 --oracle-keep
  row "this token's and the next 3 tokens', at the step's start" $pf --oracle-horizon 3 --oracle-keep
done
