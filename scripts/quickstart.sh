#!/usr/bin/env bash
# Set up, build, and run the main job on the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build
exec build/server/moeflow generate --prompt "def fibonacci(n):" --max-tokens 64 --temperature 0 --stats
