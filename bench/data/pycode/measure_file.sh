#!/usr/bin/env bash
# One path predictor file's table of docs/results.md (section 4): cache replay
# on a text at 12.5 / 25 / 50 % capacity, path and path+gate, with and without
# prefetching, on the timeline at the H100 ratio; prints a markdown table.
# Usage: bench/data/pycode/measure_file.sh BUILD_DIR [PREDICTOR_FILE] [TEXT] [TOKENS]   (from the repository root)
set -euo pipefail
B=${1:?build dir}
F=${2:-models/pycode-moe-18m/predictor.safetensors}
T=${3:-bench/data/pycode/eval.txt}
N=${4:-2048}
M="$B/server/moeflow"
echo "| capacity | predictor | prefetching | hit rate | transfers/token | useful prefetches | stall ms/token | Belady transfers/token |"
echo "|---|---|---|---|---|---|---|---|"
for f in 0.125 0.25 0.5; do
  for p in path path+gate; do
    for pf in --no-prefetch prefetch; do
      opt=(); [ "$pf" = --no-prefetch ] && opt=(--no-prefetch)
      "$M" replay --text "$T" --max-tokens "$N" --capacity-frac "$f" --predictor "$p:$F" --policy predicted \
        "${opt[@]}" --link-gbps 55 --expert-bytes 352321536 --json |
        /usr/bin/python3 -c '
import json, sys
o = json.load(sys.stdin)
f, p, pf = sys.argv[1:4]
useful = "-" if pf == "--no-prefetch" else "%.2f" % o["prefetch_useful_frac"]
print("| %.1f %% | %s | %s | %.3f | %.2f | %s | %.1f | %.2f |" % (100 * float(f), p, pf, o["hit_rate"],
      o["transfers_per_token"], useful, 1000 * o["stall_s"] / o["tokens"], o["belady"]["transfers_per_token"]))
' "$f" "$p" "$pf"
    done
  done
done
