#!/usr/bin/env bash
# Figures of docs/results.md (section 4): predictor recall and cache replay on
# the eval split (never used to train or tune the predictor or the policy).
# Usage: bench/data/pycode/measure.sh BUILD_DIR [EVAL_TOKENS] [REPLAY_TOKENS]   (from the repository root)
set -euo pipefail
B=${1:?build dir}; N=${2:-4096}; R=${3:-2048}
M="$B/server/moeflow"; T=bench/data/pycode/eval.txt
echo "## eval-predictor (first $N tokens of $T)"
for p in path gate:3 path+gate history; do
  echo "\$ $M eval-predictor --text $T --predictor $p --max-tokens $N --json"
  "$M" eval-predictor --text "$T" --predictor "$p" --max-tokens "$N" --json
done
N=$R
echo "## replay, hit rate and transfers (no timeline), first $N tokens"
for f in 0.125 0.25 0.5; do
  for pp in "none lru" "none predicted" "history predicted" "gate predicted" "path predicted" "path+gate predicted"; do
    set -- $pp
    echo "\$ $M replay --text $T --max-tokens $N --capacity-frac $f --predictor $1 --policy $2 --json"
    "$M" replay --text "$T" --max-tokens "$N" --capacity-frac "$f" --predictor "$1" --policy "$2" --json
  done
done
echo "## replay, timeline at the H100 ratio (55 GB/s, 336 MiB experts, 0.153 ms per expert-token)"
for f in 0.125 0.25 0.5; do
  for pp in "none lru" "none predicted" "path+gate predicted"; do
    set -- $pp
    echo "\$ $M replay --text $T --max-tokens $N --capacity-frac $f --predictor $1 --policy $2 --link-gbps 55 --expert-bytes 352321536 --json"
    "$M" replay --text "$T" --max-tokens "$N" --capacity-frac "$f" --predictor "$1" --policy "$2" \
      --link-gbps 55 --expert-bytes 352321536 --json
  done
done
