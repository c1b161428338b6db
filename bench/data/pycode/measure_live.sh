#!/usr/bin/env bash
# The live-cache table of docs/results.md (section 4): `moeflow generate` with
# a device tier of 64 of 256 experts under each policy and predictor; prints a
# markdown table, and the md5 of each run's text on stderr (all must match).
# Usage: bench/data/pycode/measure_live.sh BUILD_DIR   (from the repository root)
set -euo pipefail
M=${1:?build dir}/server/moeflow
H2=models/pycode-moe-18m/predictor-h2.safetensors
SJ=$(mktemp) OUT=$(mktemp)
trap 'rm -f "$SJ" "$OUT"' EXIT
run() { # label policy predictor [options]
  local lab=$1 q=$2 p=$3; shift 3
  "$M" generate --prompt 'def fibonacci(n):' --max-tokens 200 --temperature 0 --gpu-experts 64 \
    --policy "$q" --predictor "$p" "$@" --stats-json "$SJ" > "$OUT" 2>/dev/null
  /usr/bin/python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))["device"]
print("| %s | %s | %d | %d | %.4f | %d | %d | %d | %d |" % (sys.argv[2], sys.argv[3], d["hits"], d["misses"],
      d["hit_rate"], d["prefetches"], d["prefetch_hits"], d["evictions"], d["misses"] + d["prefetches"]))
' "$SJ" "$lab" "$q"
  md5sum < "$OUT" >&2
}
echo "| predictor | policy | hits | misses | hit rate | prefetches | prefetch hits | evictions | transfers |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
run "none" lru none
run "auto (path+gate)" lru auto
run "none" predicted none
run "gate" predicted gate
run "path+gate" predicted path+gate
run "path+gate (\`predictor-h2.safetensors\`)" predicted "path+gate:$H2"
run "path+gate, \`--no-prefetch\`" predicted path+gate --no-prefetch
run "path+gate (\`predictor-h2.safetensors\`), \`--no-prefetch\`" predicted "path+gate:$H2" --no-prefetch
