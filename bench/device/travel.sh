#!/usr/bin/env bash
# What the device tool sends with a call: every tracked file in the working tree, the untracked
# files git does not ignore, and the carried paths, 64 MiB in all.  The tracked tree is larger
# than that with the bundle, so the data steps aside for the call (models/, tests/fixtures/,
# bench/data): what the device check reads travels compressed in the bundle (prepare.sh):
#
#   bench/device/travel.sh size   what would travel now (with build-device/dist.tar.xz), in bytes
#   bench/device/travel.sh out    move that data to $MOEFLOW_TRAVEL_STASH (default
#                                 /tmp/moeflow-travel-stash) and print the size
#   bench/device/travel.sh back   move it back (the tree is then as it was)
#
# The device check reads models/pycode-moe-18m, tests/fixtures/hf-tiny and the fixtures of
# tests/engine/model_variants.h, all from the bundle's data/.
# Between `out` and `back` git shows the moved files as deleted: commit nothing meanwhile.
set -euo pipefail
cd "$(dirname "$0")/../.."
stash=${MOEFLOW_TRAVEL_STASH:-/tmp/moeflow-travel-stash}
limit=$((64 * 1024 * 1024))
aside="models tests/fixtures bench/data"

size() {
  local bundle=0 files
  [ -f build-device/dist.tar.xz ] && bundle=$(stat -c %s build-device/dist.tar.xz)
  files=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } |
           xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
  echo $((files + bundle))
}

report() {
  local n
  n=$(size)
  if [ "$n" -le "$limit" ]; then
    echo "travel.sh: $n bytes would travel (limit $limit): fits"
  else
    echo "travel.sh: $n bytes would travel, over the limit of $limit: run bench/device/travel.sh out" >&2
    return 1
  fi
}

case "${1:-}" in
  size) report ;;
  out)
    if [ -e "$stash" ]; then
      echo "travel.sh: $stash exists (data already aside?): run 'travel.sh back' first" >&2
      exit 1
    fi
    for p in $aside; do
      [ -e "$p" ] || continue
      mkdir -p "$stash/$(dirname "$p")"
      mv "$p" "$stash/$p"
    done
    report
    ;;
  back)
    if [ ! -d "$stash" ]; then
      echo "travel.sh: nothing aside ($stash does not exist)" >&2
      exit 1
    fi
    for p in $aside; do
      if [ -e "$stash/$p" ]; then
        if [ -e "$p" ]; then
          echo "travel.sh: $p is in the tree and aside; left both: compare and remove one" >&2
          exit 1
        fi
        mkdir -p "$(dirname "$p")"
        mv "$stash/$p" "$p"
      fi
    done
    rm -rf "$stash"
    git status --short -- $aside | head -5
    echo "travel.sh: data back in place"
    ;;
  *)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
