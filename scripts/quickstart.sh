#!/usr/bin/env bash
# Set up, build, and run the main job on the bundled model: pack its experts
# into a store on disk, then generate with a device tier holding a quarter of
# the experts and a host tier holding half, fetching the rest from the store.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build
build/server/moeflow pack --quiet --out build/pycode-moe-18m.moestore
exec build/server/moeflow generate --prompt "def fibonacci(n):" --max-tokens 64 --temperature 0 \
    --store build/pycode-moe-18m.moestore --gpu-experts 64 --host-experts 128 --stats
