#!/usr/bin/env bash
# Installs what is missing (Debian 12), then configures and builds lpd into
# build/ (override with LPD_BUILD_DIR). Extra arguments go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
build_dir=${LPD_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
# LibTorch translation units need ~1.6 GB each to compile: one job per 3 GB.
mem_gb=$(awk '/MemTotal/ {print int($2 / 1048576)}' /proc/meminfo)
jobs=$(( mem_gb / 3 )); cores=$(nproc)
(( jobs < 1 )) && jobs=1; (( jobs > cores )) && jobs=$cores
cmake --build "$build_dir" -j "$jobs"
