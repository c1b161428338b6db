#!/bin/sh
# Records the routing trace of the bundled model over Python source text and
# replays it through `moeflow sim` for docs/results.md (section 3).
#
# usage: bench/offload/make_pytrace.sh BUILD_DIR OUT_DIR
#   BUILD_DIR: a configured and built moeflow build (holds server/moeflow)
#   OUT_DIR:   where pystdlib.txt, pystdlib.jsonl and sim-*.json go
#
# Text: these files of this machine's Python 3.11 standard library, concatenated
# in this order (Debian 12 python3.11 3.11.2; used for nothing else in the project):
FILES="argparse.py textwrap.py shlex.py heapq.py fnmatch.py calendar.py"
set -eu
BUILD=${1:?usage: make_pytrace.sh BUILD_DIR OUT_DIR}
OUT=${2:?usage: make_pytrace.sh BUILD_DIR OUT_DIR}
MOEFLOW="$BUILD/server/moeflow"
mkdir -p "$OUT"
: > "$OUT/pystdlib.txt"
for f in $FILES; do
    cat "/usr/lib/python3.11/$f" >> "$OUT/pystdlib.txt"
done
sha256sum "$OUT/pystdlib.txt"
"$MOEFLOW" trace --text "$OUT/pystdlib.txt" --seq-len 256 --out "$OUT/pystdlib.jsonl"
for frac in 0.125 0.25 0.5; do
    for pol in lru lfu belady; do
        "$MOEFLOW" sim --trace "$OUT/pystdlib.jsonl" --capacity-frac $frac --policy $pol --json \
            --expert-bytes 352321536 --link-gbps 55 --expert-ms 0.153 \
            > "$OUT/sim-$pol-$frac.json"
        echo "$frac $pol $(cat "$OUT/sim-$pol-$frac.json")"
    done
done
