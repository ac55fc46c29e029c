#!/usr/bin/env bash
# Builds the engine, worker and benchmark against a CUDA LibTorch and runs the
# GPU checks and benchmarks. Expects the Debian libraries unpacked by
# .gpu-debs/device-env.sh (see ../shared/gpu/README.md) and the reference
# models copied to .gpu-data/. Writes logs to $OUT (or out/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu}
mkdir -p "$out"
source .gpu-debs/device-env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DLPD_RELEASE_OPT=-O3 -DLPD_BUILD_TESTS=OFF \
  $LPD_CMAKE_ARGS > "$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
time cmake --build build-gpu --target unet_forward unet_profile lpd-worker -- -k 0 > "$out/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$out/build.log" | head -30; }
w=build-gpu/worker/lpd-worker
for m in tiny-sd15 tiny-sdxl; do
  for dt in float32 bfloat16; do
    $w forward --model .gpu-data/$m --inputs .gpu-data/$m/vectors.safetensors \
      --out "$out/$m-$dt.safetensors" --device cuda --dtype $dt >/dev/null &&
    echo "== $m cuda $dt vs reference" &&
    python3 bench/compare_outputs.py "$out/$m-$dt.safetensors" \
      .gpu-data/$m/vectors.safetensors --tol $([ $dt = float32 ] && echo 1e-3 || echo 1) | tail -1
  done
done
rm -f "$out"/*.safetensors
build-gpu/bench/unet_forward ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.txt"
