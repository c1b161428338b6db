#!/usr/bin/env bash
# Set up, build, and run the whole suite: the main build (CUDA compiled when
# nvcc exists; GPU tests skip without a device), then a clang ASan/UBSan build
# that runs the unit tests and the bounded libFuzzer smokes, then the build
# without the server (-DMOEFLOW_SERVER=OFF, as the device bundle makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
CC=clang cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEFLOW_CUDA=OFF \
    -DMOEFLOW_SANITIZE=ON -DMOEFLOW_FUZZ=ON >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ctest --output-on-failure -j"$jobs" -L 'unit|fuzz')
cmake -S . -B build-noserver -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEFLOW_CUDA=OFF -DMOEFLOW_SERVER=OFF >/dev/null
cmake --build build-noserver -j"$jobs" --target moeflow
