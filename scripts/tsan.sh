#!/usr/bin/env bash
# ThreadSanitizer run of the code that shares data between threads (a developer check, not part of
# scripts/test.sh): a clang -fsanitize=thread CPU build in build-tsan, then the live-server
# integration tests and the scheduler, offload, engine and template tests that start threads, with
# tests/tsan.supp (third-party libraries only), MOEFLOW_TEST_TIME_SCALE (default 10 here) for the
# slower server and four times ctest's time limits (MOEFLOW_TEST_TIMEOUT_SCALE).  Each process's reports go to build-tsan/tsan-logs/tsan.PID; the script fails when a
# test fails or any report was written, and prints the reports.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
tsan=-fsanitize=thread
CC=clang cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEFLOW_CUDA=OFF \
    -DCMAKE_C_FLAGS="$tsan" -DCMAKE_EXE_LINKER_FLAGS="$tsan" -DCMAKE_SHARED_LINKER_FLAGS="$tsan" \
    -DCMAKE_MODULE_LINKER_FLAGS="$tsan" -DMOEFLOW_TEST_TIMEOUT_SCALE=4 >/dev/null
tests=(test_serve_api test_serve_faults test_serve_clients test_serve_openai test_serve_chat test_serve_tiered
       test_serve_prepare test_serve_openai_prepared
       test_sched_batching test_sched_limits test_sched_engine
       test_offload_tiered test_offload_tiered_hint test_offload_store test_offload_engine
       test_engine_batch test_jinja)
cmake --build build-tsan -j"$jobs" --target moeflow serve_fault_shim "${tests[@]}"
logs=$PWD/build-tsan/tsan-logs
rm -rf "$logs"
mkdir -p "$logs"
opts=(suppressions="$PWD/tests/tsan.supp" halt_on_error=0 second_deadlock_stack=1 print_suppressions=0
      log_path="$logs/tsan")
export TSAN_OPTIONS="${opts[*]}"
export MOEFLOW_TEST_TIME_SCALE=${MOEFLOW_TEST_TIME_SCALE:-10}
status=0
# one test at a time: the time scale allows for the sanitizer's slowdown, not for two servers sharing the cores
(cd build-tsan && ctest --output-on-failure -j1 -R "^($(IFS='|'; echo "${tests[*]}"))\$") || status=1
reports=("$logs"/tsan.*)
if [ -e "${reports[0]}" ]; then
    cat "${reports[@]}"
    echo "ThreadSanitizer: reports from ${#reports[@]} process(es) in $logs" >&2
    status=1
fi
exit "$status"
