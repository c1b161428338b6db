#!/usr/bin/env bash
# The device check, in one call on a machine with an NVIDIA GPU (H100/H200):
#   1. the gpu-labelled tests (op parity, GPU tier, end-to-end vs HF, the --backend
#      factory, sticky errors),
#   2. the CLI end to end: `moeflow generate --backend cuda --temperature 0` prints the
#      CPU backend's text (all experts on the GPU, and the GPU tier at 25 %),
#   3. the GPU benchmarks: the bundled model through the engine (batch 1/8/64, tier
#      25/50/100 %, cuBLAS and batch-invariant GEMMs), the MoE decode benchmark
#      with Mixtral expert shapes (tier 25/50/100 %) and, in its invariant run, decode
#      attention at batch 1 over 1k/8k/32k contexts (split and unsplit kernels),
#   4. a short compute-sanitizer memcheck of the op and tier tests (skips where the
#      sanitizer refuses the device, as on gVisor machines); last, so that a slow
#      sanitizer cannot cost the benchmarks their time,
#   5. the expert store's reader against the machine's disk (store_read_bench, 1 GiB
#      file under /tmp), if the budget leaves time.
# Results go under $OUT (default ./device-out): summary.json (every step's status; the
# CLI step lists its cases; rewritten after every step, "finished" true at the end),
# logs.tar.gz (one log per step, likewise), gpu_model_decode.json,
# gpu_model_decode_kv_bf16.json, gpu_moe_decode.json, gpu_moe_decode_invariant.json,
# store_read_bench.json (JSON Lines: an object per case), nvidia-smi.txt (8 files: all the device
# tool brings back).  The tails of
# failing steps' logs are printed before the summary.  Budget: under 6 minutes; a step
# the budget cuts short is a skip with reason "time budget", not a failure.
#
# Binaries come from build-device/dist.tar.xz (made here by bench/device/prepare.sh
# and carried; unpacked under /tmp; MOEFLOW_BUNDLE names another), an unpacked
# build-device/dist, or MOEFLOW_DIST.
# Exit status: 0 when every step ran and passed, 1 when a step failed, 2 when there are no binaries
# to run (summary.json holds only that error), 3 when none failed but the budget cut some short or
# left no time for them, or a program found no CUDA device (its exit 77, a skip: the GPU programs
# skip only for want of a device, so on the device machine the check then did not run; under
# compute-sanitizer an exit 77 is the sanitizer's limit, a skip that leaves the exit status alone).
# tests/gpu/test_device_check.py runs this script over a fake bundle on the CPU.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-$root/device-out}
dist=${MOEFLOW_DIST:-$root/build-device/dist}
mkdir -p "$out" && out=$(cd "$out" && pwd)
logs=$(mktemp -d /tmp/moeflow-logs.XXXXXX) # one log per step, archived into $out after each
bundle=${MOEFLOW_BUNDLE:-$root/build-device/dist.tar.xz}
if [ -z "${MOEFLOW_DIST:-}" ] && [ ! -x "$dist/bin/test_gpu_ops" ] && [ -f "$bundle" ]; then
  unpack=$(mktemp -d /tmp/moeflow-dist.XXXXXX)
  # tar -J runs the xz program, which a bare machine may lack; python3's tarfile reads .xz itself
  if tar -C "$unpack" -xJf "$bundle" 2> "$logs/unpack.log" ||
     python3 -W ignore -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
       "$bundle" "$unpack" 2>> "$logs/unpack.log"; then
    dist=$unpack/dist
  fi
fi
# json_str S: S as a JSON string (without python3: with quotes, backslashes and control characters dropped)
json_str() {
  python3 -c 'import json, sys; sys.stdout.write(json.dumps(sys.argv[1]))' "$1" 2>/dev/null ||
    printf '"%s"' "$(printf '%s' "$1" | tr -d '\\"\000-\037')"
}
if [ ! -x "$dist/bin/test_gpu_ops" ]; then
  msg="$dist/bin/test_gpu_ops missing: run bench/device/prepare.sh on the build machine and carry $bundle"
  echo "check.sh: $msg" >&2
  printf '{"failures":1,"error":%s}\n' "$(json_str "$msg")" > "$out/summary.json"
  exit 2
fi
cuda_lib=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
         /usr/local/cuda-13.0/lib64 /usr/local/cuda-13.0/lib; do
  [ -d "$d" ] && cuda_lib="$cuda_lib:$d"
done
# cuBLAS 13 elsewhere (a distribution package or a Python wheel: CUDA 13's nvidia-cublas puts it in
# site-packages/nvidia/cu13/lib, /opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib is 8 below /opt)
if ! ls ${cuda_lib//:/ } 2>/dev/null | grep -q . || ! (IFS=:; for d in $cuda_lib; do
      [ -n "$d" ] && [ -e "$d/libcublas.so.13" ] && exit 0; done; exit 1); then
  found=$(find /usr /opt -maxdepth 10 -name 'libcublas.so.13' 2>/dev/null | head -1)
  [ -n "$found" ] && cuda_lib="$cuda_lib:$(dirname "$found")"
fi
export LD_LIBRARY_PATH="$dist/lib$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# the model and the fixtures: the bundle's copy (travel.sh sets the tree's aside), else the tree's
data=$root
[ -d "$dist/data/models" ] && data=$dist/data
export MOEFLOW_SOURCE_DIR="$data" MOEFLOW_MODEL="$data/models/pycode-moe-18m"
export MOEFLOW_TEST_SEED=${MOEFLOW_TEST_SEED:-$(date +%s)}
# a decimal seed is a JSON number in summary.json, any other (the tests also take hex) a string
seed_json=$MOEFLOW_TEST_SEED
[[ $seed_json =~ ^[1-9][0-9]{0,17}$|^0$ ]] || seed_json=$(json_str "$MOEFLOW_TEST_SEED")

(nvidia-smi; nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current \
   --format=csv) > "$out/nvidia-smi.txt" 2>&1
steps=()
fails=0
cut_steps=0   # steps the time budget skipped or cut short
nodev_steps=0 # steps whose program exited 77: it saw no CUDA device
# summary.json and logs.tar.gz as they stand ("finished" false until the end): a run cut off
# from outside still reports its steps, in no more files than the device tool brings back
report() {
  {
    printf '{"seed":%s,"failures":%d,"finished":%s,"steps":[' "$seed_json" "$fails" "$1"
    (IFS=,; printf '%s' "${steps[*]}")
    printf ']}\n'
  } > "$out/summary.json"
  (cd "$logs" && set -- *.log && [ -e "$1" ] && tar -czf "$out/logs.tar.gz" -- "$@")
}
# run NAME TIMEOUT CMD... : one step, its log, its status and seconds.  A step cut
# short because the budget left was below its own limit is a skip ("time budget"),
# not a failure; one that runs past its own full limit is a failure ("timeout").
budget_end=$(( $(date +%s) + ${CHECK_BUDGET_S:-330} ))   # stay under 6 minutes in all
run() {
  local name=$1 limit=$2; shift 2
  local left=$(( budget_end - $(date +%s) )) cut=0
  if [ $left -le 5 ]; then
    steps+=("{\"step\":\"$name\",\"status\":\"skip\",\"reason\":\"time budget\"}")
    echo "check.sh: $name: skipped (time budget spent)"
    cut_steps=$((cut_steps + 1))
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left && cut=1
  local t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" > "$logs/$name.log" 2>&1
  local rc=$?
  local dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  local status=pass why=""
  if { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && [ $cut -eq 1 ]; then
    status=skip why="time budget" cut_steps=$((cut_steps + 1))
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status=timeout && fails=$((fails + 1))
  elif [ $rc -eq 77 ] && [ "${name#memcheck_}" != "$name" ]; then
    # the sanitizer hid the device, as where it refuses it (below): its own limit, not the check's
    status=skip why="no CUDA device under compute-sanitizer (exit 77)"
  elif [ $rc -eq 77 ]; then
    status=skip why="no CUDA device (exit 77)" nodev_steps=$((nodev_steps + 1))
  elif [ $rc -ne 0 ]; then
    status=fail && fails=$((fails + 1))
  fi
  steps+=("{\"step\":\"$name\",\"status\":\"$status\",\"rc\":$rc,\"seconds\":$dt${why:+,\"reason\":\"$why\"}}")
  echo "check.sh: $name: $status (rc $rc, ${dt}s${why:+; $why})"
  report false
}

b=$dist/bin
run test_gpu_ops 120 "$b/test_gpu_ops"
run test_gpu_grouped 120 "$b/test_gpu_grouped"
run test_gpu_tier 120 "$b/test_gpu_tier"
if [ -x "$b/test_gpu_e2e_pycode" ]; then
  for m in pycode mixtral qwen2_moe qwen3_moe olmoe deepseek_v3; do
    run "test_gpu_e2e_$m" 60 "$b/test_gpu_e2e_pycode" "$m"
  done
else
  steps+=("{\"step\":\"test_gpu_e2e\",\"status\":\"fail\",\"reason\":\"not in the bundle\"}")
  fails=$((fails + 1))
fi
# a test the bundle lacks is a failure (prepare.sh builds them all), not a silent gap
for t in test_gpu_variants:60 test_gpu_runtime:90 test_gpu_sticky:60; do
  if [ -x "$b/${t%%:*}" ]; then
    run "${t%%:*}" "${t##*:}" "$b/${t%%:*}"
  else
    steps+=("{\"step\":\"${t%%:*}\",\"status\":\"fail\",\"reason\":\"not in the bundle\"}")
    fails=$((fails + 1))
  fi
done
if [ -x "$b/moeflow" ]; then
  run cli_generate_cuda_vs_cpu 150 bash "$root/bench/device/cli_generate.sh" "$b/moeflow" "$MOEFLOW_MODEL"
  # the cases ("case NAME pass|fail" lines) go into the step's summary entry; only the script's own
  # names (p0_cuda_all): a failing case's texts, printed in the log, may hold such lines too
  cases=$(awk '$1 == "case" && NF == 3 && $2 ~ /^p[0-9]+_[a-z_]+$/ && ($3 == "pass" || $3 == "fail") {
                 printf "%s\"%s\":\"%s\"", n++ ? "," : "", $2, $3 }' \
          "$logs/cli_generate_cuda_vs_cpu.log" 2>/dev/null)
  last=${steps[${#steps[@]}-1]}
  steps[${#steps[@]}-1]="${last%\}},\"cases\":{$cases}}"
else
  steps+=("{\"step\":\"cli_generate_cuda_vs_cpu\",\"status\":\"fail\",\"reason\":\"moeflow not in the bundle\"}")
  fails=$((fails + 1))
fi
[ -x "$b/gpu_model_decode" ] && run gpu_model_decode 90 "$b/gpu_model_decode" --steps 16 \
  --json "$out/gpu_model_decode.json"
# the BF16 KV cache against the F32 one above: all experts resident, the batch-invariant GEMMs
[ -x "$b/gpu_model_decode" ] && run gpu_model_decode_kv_bf16 45 "$b/gpu_model_decode" --steps 16 \
  --capacities 100 --modes invariant --kv-dtype bf16 --json "$out/gpu_model_decode_kv_bf16.json"
run gpu_moe_decode 180 "$b/gpu_moe_decode" --steps 4 --warm 1 --json "$out/gpu_moe_decode.json"
# with decode attention at batch 1 (its "attention" object; the 8-file limit leaves no file of its own)
run gpu_moe_decode_invariant 70 "$b/gpu_moe_decode" --gemm invariant --capacities 100 --steps 4 --warm 1 \
  --attention 1024,8192,32768 --json "$out/gpu_moe_decode_invariant.json"
san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
# --report-api-errors no: test_gpu_tier asks for an impossible cudaMalloc on purpose (its
# error message is tested); memcheck would otherwise report that API error and fail the step.
memcheck=("$san" --tool memcheck --error-exitcode 1 --report-api-errors no)
# compute-sanitizer refuses some device machines (gVisor: "Device not supported", then
# error 999 at the first allocation).  Probe once, on the quick tier test (killed after
# 20 s: a run that gets that far works); on refusal both memcheck steps are skips.
san_refused=""
if [ -n "$san" ] && [ -x "$b/test_gpu_tier" ] && [ $(( budget_end - $(date +%s) )) -gt 60 ]; then
  MOEFLOW_TEST_QUICK=1 timeout -k 5 20 "${memcheck[@]}" "$b/test_gpu_tier" > "$logs/memcheck_probe.log" 2>&1
  grep -qE 'Device not supported|error 999' "$logs/memcheck_probe.log" &&
    san_refused="compute-sanitizer does not support this device (Device not supported, error 999)"
fi
if [ -z "$san" ]; then
  steps+=("{\"step\":\"memcheck\",\"status\":\"skip\",\"reason\":\"compute-sanitizer not found\"}")
elif [ -n "$san_refused" ]; then
  for n in memcheck_gpu_ops memcheck_gpu_tier; do
    steps+=("{\"step\":\"$n\",\"status\":\"skip\",\"reason\":\"$san_refused\"}")
    echo "check.sh: $n: skipped ($san_refused)"
  done
else
  run memcheck_gpu_ops 150 "${memcheck[@]}" --leak-check full "$b/test_gpu_ops"
  export MOEFLOW_TEST_QUICK=1
  run memcheck_gpu_tier 120 "${memcheck[@]}" "$b/test_gpu_tier"
  unset MOEFLOW_TEST_QUICK
fi
# the NVMe tier: the store's reader against this machine's disk (docs/hw: 1.18 GB/s sequential)
if [ -x "$b/store_read_bench" ]; then
  run store_read_bench 45 "$b/store_read_bench" --mib 1024 --reps 1 --file /tmp/moeflow-store-read-bench.bin
  grep '^{' "$logs/store_read_bench.log" > "$out/store_read_bench.json" 2>/dev/null || true
fi

# the tails of failing steps' logs, then every log in one archive (the device tool
# brings back at most 8 files)
for s in "${steps[@]}"; do
  case "$s" in
    *'"status":"fail"'*|*'"status":"timeout"'*)
      n=${s#*\"step\":\"}; n=${n%%\"*}
      [ -f "$logs/$n.log" ] && { echo "=== $n.log (last 25 lines)"; tail -n 25 "$logs/$n.log"; } ;;
  esac
done
report true
cat "$out/summary.json"
[ $fails -eq 0 ] || exit 1
if [ $nodev_steps -gt 0 ]; then
  echo "check.sh: no step failed, but $nodev_steps found no CUDA device (exit 77): the GPU check did not" \
       "run there; see nvidia-smi.txt and the steps' logs" >&2
fi
if [ $cut_steps -gt 0 ]; then
  echo "check.sh: no step failed, but $cut_steps did not run to their end (time budget): not a pass;" \
       "rerun with a larger CHECK_BUDGET_S or read summary.json's skips" >&2
fi
[ $cut_steps -eq 0 ] && [ $nodev_steps -eq 0 ] || exit 3
