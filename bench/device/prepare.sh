#!/usr/bin/env bash
# Build the GPU check here (Debian, nvcc 13) and bundle it for the device
# machine, which has CUDA 13 + a C compiler but none of liburing, protobuf-c,
# gRPC, jansson or OpenBLAS headers/libraries:
#   build-device/dist/bin/  test_gpu_*, gpu_moe_decode, gpu_model_decode, moeflow (stripped;
#                           moeflow without the server, for the CLI check)
#   build-device/dist/lib/  every shared library they need except glibc, the
#                           CUDA driver and cuBLAS (present there in /usr/local/cuda)
#   build-device/dist/data/ the data the check reads: models/pycode-moe-18m, tests/fixtures/hf-tiny
#                           and the fixture families of tests/engine/model_variants.h (tracked
#                           files only; check.sh points the tests there, travel.sh sets the
#                           tree's copies aside)
# Then hand the device tool:  carry ["build-device/dist.tar.xz"], command
#   bench/device/check.sh   (it unpacks the bundle under /tmp)
# (CUDA runtime is linked statically; cuBLAS comes from the device's CUDA 13.)
# MOEFLOW_DEVICE_BUILD=DIR builds in DIR instead of build-device (then carry DIR/dist.tar.xz
# and run check.sh with MOEFLOW_BUNDLE=DIR/dist.tar.xz).
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs=${JOBS:-2}
bdir=${MOEFLOW_DEVICE_BUILD:-build-device}
cmake -S . -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOEFLOW_CUDA=ON -DMOEFLOW_SERVER=OFF >/dev/null
targets="test_gpu_ops test_gpu_grouped test_gpu_tier test_gpu_sticky gpu_moe_decode"
for opt in test_gpu_e2e_pycode test_gpu_variants test_gpu_runtime gpu_model_decode moeflow store_read_bench; do
  if grep -q "$opt" "$bdir/build.ninja"; then targets="$targets $opt"; fi
done
cmake --build "$bdir" -j"$jobs" --target $targets
dist=$bdir/dist
rm -rf "$dist"
mkdir -p "$dist/bin" "$dist/lib"
for t in $targets; do
  f=$(find "$bdir" -path "$bdir/dist" -prune -o -type f -name "$t" -perm -u+x -print | head -1)
  cp "$f" "$dist/bin/$t"
  strip --strip-unneeded "$dist/bin/$t"
done
# shared libraries to carry: not glibc/loader, not the CUDA driver, not cuBLAS, not
# libstdc++/libgcc_s (the device has newer ones, which cuBLAS may need)
for b in "$dist"/bin/*; do
  ldd "$b" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libcuda.so*|libcublas*|libstdc++*|libgcc_s*) ;;
    *) cp -L "$lib" "$dist/lib/" ;;
  esac
done
# The data the tests and benchmarks read, compressed with the bundle (the model and the fixtures
# shrink from 63 to 42 MB): the device tool carries at most 64 MiB with the working tree, and
# bench/device/travel.sh sets models/ and tests/fixtures/ aside for the call.
variants=$(grep -o '"[a-z0-9_.-]*/[a-z0-9_.-]*"' tests/engine/model_variants.h | tr -d '"' | cut -d/ -f1 | sort -u)
data="models/pycode-moe-18m tests/fixtures/hf-tiny"
for v in $variants; do data="$data tests/fixtures/$v"; done
for d in $data; do
  if [ ! -d "$d" ]; then
    echo "prepare.sh: $d is missing (set aside by travel.sh out?): run bench/device/travel.sh back first" >&2
    exit 1
  fi
done
mkdir -p "$dist/data"
# shellcheck disable=SC2086
git ls-files -z -- $data | tar --null -T - -cf - | tar -C "$dist/data" -xf -
tar -C "$bdir" -cJf "$bdir/dist.tar.xz" dist
du -sh "$dist" "$bdir/dist.tar.xz"
if [ "$bdir" = build-device ]; then
  bench/device/travel.sh size || true
  echo "then: bench/device/travel.sh out; carry: build-device/dist.tar.xz   command: bench/device/check.sh;"
  echo "      afterwards bench/device/travel.sh back"
else
  echo "carry: $bdir/dist.tar.xz   command: MOEFLOW_BUNDLE=$bdir/dist.tar.xz bench/device/check.sh"
fi
