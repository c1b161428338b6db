#!/usr/bin/env bash
# Install the Debian 12 packages moeflow builds and tests with (only those missing).
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
      libjansson-dev libopenblas-dev liburing-dev libxxhash-dev libhwloc-dev
      libprotobuf-c-dev protobuf-c-compiler libgrpc-dev libevent-dev
      python3 python3-grpcio python3-protobuf python3-jsonschema python3-yaml protobuf-compiler
      protobuf-compiler-grpc curl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "moeflow: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
