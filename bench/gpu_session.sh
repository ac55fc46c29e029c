#!/usr/bin/env bash
# The GPU runs of one device session on a 4-GPU H200 machine, as steps that
# each fit one 10-minute device command (the machine keeps build-gpu/ and
# out/ between commands while it stays warm). Expects .gpu-debs/ (Debian's
# libraries, ../shared/gpu/README.md) and .gpu-data/tiny-sd15 carried along;
# writes what comes back to $OUT.
#
#   bench/gpu_session.sh dp     build; a tiny-sd15 job with distill.gpus 1
#                               and 2 through lpd-worker run (NCCL), then
#                               bench/distill_ddp SD-v1.5 on 1 and 2 GPUs
#   bench/gpu_session.sh gate   the quality study's teacher and gate on GPU 0
#                               (studies/quality/quality_study_gpus.sh gate), while
#                               GPUs 2-3 measure distill_ddp variants
#   bench/gpu_session.sh rows   the quality study's 27 row-seeds on all GPUs,
#                               then the table
#   bench/gpu_session.sh scaling  distill_ddp SD-v1.5 and SDXL on 1 and 2 GPUs,
#                               and the tiny job with distill.gpus 2
#   bench/gpu_session.sh speed [sd15,sdxl,sdxl-pruned,ab,forward,profile]
#                               one GPU: the fused training kernels checked
#                               against autograd, distill_step per case (ab:
#                               also with --cuda-graph off; ab-teacher: SDXL
#                               with --concurrent-teacher off), Kineto
#                               profiles summarized, the tiny models' CUDA
#                               forward against the reference vectors and
#                               unet_forward
#   bench/gpu_session.sh forward [unet_forward flags]
#                               one GPU: unet_forward for SDXL in every
#                               mode with Kineto traces, summarized (with
#                               UNET_PROFILE=1 unet_profile for SDXL first)
#   bench/gpu_session.sh checks the fused kernels against the plain ops
#                               (unet_forward), and the tiny-sd15 job on one
#                               GPU through lpd-worker run
#   bench/gpu_session.sh layout-a   after a move of the house (issue 14):
#                               build, the tiny models' CUDA forward against
#                               the reference vectors, the tiny-sd15 job on
#                               one GPU, unet_forward (graph) twice
#   bench/gpu_session.sh layout-b   distill_step per case and score_units:
#                               the other figures issue 14 asks for
#   bench/gpu_session.sh final  the kernel and graph checks and SD-v1.5, then
#                               every case with the teacher's forward
#                               concurrent and not, the tiny models' CUDA
#                               forward against the reference vectors, then
#                               unet_forward twice
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-out/gpu-session}
mkdir -p "$out" out
source .gpu-debs/device-env.sh
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

build() {
  local start=$SECONDS
  if [ ! -f build-gpu/build.ninja ]; then
    cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DLPD_RELEASE_OPT=-O3 \
      -DLPD_BUILD_TESTS=OFF -DLPD_BUILD_FUZZERS=OFF $LPD_CMAKE_ARGS \
      >out/cmake.log 2>&1 || { tail -30 out/cmake.log; exit 1; }
  fi
  cmake --build build-gpu --target ${BUILD_TARGETS:-quality_study distill_ddp lpd-worker} \
    >out/build.log 2>&1 || { grep -E "error|FAILED" out/build.log | head -30; exit 1; }
  echo "build: $((SECONDS - start)) s"
}

# A tiny-sd15 compression job on CUDA with distill.gpus $1, fp32 (so that 1
# and 2 ranks can be compared closely), into out/dp-job-$1.
tiny_job() {
  local gpus=$1 dir=$PWD/out/dp-job
  mkdir -p "$dir"
  [ -d "$dir/data" ] || build-gpu/worker/lpd-worker synth-dataset \
    --model .gpu-data/tiny-sd15 --samples 256 --out "$dir/data" --seq-len 8 >/dev/null
  cat >"$dir/job-$gpus.yaml" <<EOF
apiVersion: lpd/v1
kind: CompressionJob
metadata: {name: tiny-gpus-$gpus}
spec:
  model: {uri: "file://$PWD/.gpu-data/tiny-sd15/"}
  data: {train: {uri: "file://$dir/data/"}, calibration_samples: 16, eval_samples: 32}
  prune: {target_ratio: 0.3, criterion: output_loss, units: [resnet, attention]}
  distill: {steps: 200, batch_size: 64, learning_rate: 1.0e-4, precision: fp32, checkpoint_every: 100, gpus: $gpus}
  output: {uri: "file://$dir/out-$gpus/"}
  seed: 3
  device: cuda
EOF
  rm -rf "$dir/out-$gpus"
  local start=$SECONDS
  build-gpu/worker/lpd-worker run "$dir/job-$gpus.yaml" --log-every 50 2>&1 |
    tee "$out/dp-job-$gpus.log" | grep -E "data-parallel|step 200/200|EVALUATE: [0-9]|done in"
  echo "tiny job, distill.gpus $gpus: $((SECONDS - start)) s"
}

# The tiny reference models' float32 forward on CUDA against their vectors.
tiny_forward_checks() {
  for m in tiny-sd15 tiny-sdxl; do
    build-gpu/worker/lpd-worker forward --model .gpu-data/$m \
      --inputs .gpu-data/$m/vectors.safetensors --out out/$m.safetensors \
      --device cuda --dtype float32 >/dev/null &&
      echo "== $m cuda float32 vs reference" &&
      python3 bench/compare_outputs.py out/$m.safetensors \
        .gpu-data/$m/vectors.safetensors --tol 1e-3 | tail -1
  done
}

case ${1:-} in
  dp)
    build
    nvidia-smi -L
    tiny_job 1
    tiny_job 2
    python3 - <<'EOF'
import json
a = json.load(open("out/dp-job/out-1/report.json"))
b = json.load(open("out/dp-job/out-2/report.json"))
print("relative error, 1 rank %.6g, 2 ranks %.6g" % (a["relative_error"], b["relative_error"]))
EOF
    build-gpu/bench/distill_ddp --case sd15 --world-sizes 1,2 --steps 30 2>&1 |
      tee "$out/ddp-sd15.txt" | tail -8
    ;;
  gate)
    build
    (
      export CUDA_VISIBLE_DEVICES=2,3
      for v in "--overlap 0 --bucket-mb 25" "--overlap 0 --bucket-mb 200" \
        "--overlap 1 --bucket-mb 100"; do
        echo "== sd15 $v"
        timeout 150 build-gpu/bench/distill_ddp --case sd15 --world-sizes 1,2 \
          --steps 30 $v 2>&1 | tail -4
      done
      echo "== sdxl --overlap 0 --bucket-mb 25"
      timeout 200 build-gpu/bench/distill_ddp --case sdxl --world-sizes 1,2 \
        --steps 15 2>&1 | tail -4
    ) >"$out/ddp-variants.txt" 2>&1 &
    variants=$!
    CUDA_VISIBLE_DEVICES=0 studies/quality/quality_study_gpus.sh gate build-gpu \
      out/quality --gpus 1 "${@:2}"
    rc=$?
    cp out/quality/study.json "$out/" 2>/dev/null
    tar -C out/quality --exclude=teacher --exclude='*.safetensors' \
      -czf "$out/gate.tgz" .
    wait $variants
    cat "$out/ddp-variants.txt"
    exit $rc
    ;;
  rows)
    build
    studies/quality/quality_study_gpus.sh rows build-gpu out/quality "${2:-4}" "${@:3}"
    rc=$?
    tar -C out/quality --exclude=teacher --exclude='*.safetensors' \
      --exclude='*.ppm' -czf "$out/quality.tgz" .
    cp out/quality/table.md "$out/" 2>/dev/null
    exit $rc
    ;;
  scaling)
    build
    build-gpu/bench/distill_ddp --case sd15 --world-sizes 1,2 --steps 30 2>&1 |
      tee "$out/ddp-sd15.txt" | grep -v Warning | tail -6
    tiny_job 2
    python3 -c 'import json; print("relative error, 2 ranks", json.load(open("out/dp-job/out-2/report.json"))["relative_error"])'
    timeout 100 build-gpu/bench/distill_ddp --case sdxl --world-sizes 1,2 \
      --steps 15 2>&1 | tee "$out/ddp-sdxl.txt" | grep -v Warning | tail -6
    ;;
  speed)
    BUILD_TARGETS="distill_step unet_forward lpd-worker" build
    parts=${2:-sd15,sdxl,sdxl-pruned,ab,forward,profile}
    has() { [[ ",$parts," == *",$1,"* ]]; }
    prof=""
    has profile && prof="--profile $out/trace"
    has sd15 && build-gpu/bench/distill_step --case sd15 --steps 10 \
      --check-kernels $prof 2>&1 | grep -v Warning | tee "$out/distill-sd15.txt"
    has ab && build-gpu/bench/distill_step --case sd15 --steps 10 \
      --cuda-graph off 2>&1 | grep -v Warning | tail -2
    has sdxl && build-gpu/bench/distill_step --case sdxl --steps 10 $prof 2>&1 |
      grep -v Warning | tee "$out/distill-sdxl.txt"
    has sdxl-pruned && build-gpu/bench/distill_step --case sdxl-pruned \
      --steps 6 2>&1 | grep -v Warning | tee "$out/distill-sdxl-pruned.txt"
    has ab && build-gpu/bench/distill_step --case sdxl --steps 6 \
      --cuda-graph off 2>&1 | grep -v Warning | tail -2
    has ab-teacher && build-gpu/bench/distill_step --case sdxl --steps 10 \
      --concurrent-teacher off 2>&1 | grep -v Warning | tail -2
    for t in "$out"/trace-*.json; do
      [ -f "$t" ] || continue
      echo "== $t"
      python3 bench/trace_summary.py "$t" --top 30 | tee "${t%.json}.txt"
      gzip -f "$t"
    done
    if has forward; then
      tiny_forward_checks
      build-gpu/bench/unet_forward --mode graph --iters 30 2>&1 |
        grep -v Warning | tee "$out/unet-forward.txt"
    fi
    ;;
  forward)
    BUILD_TARGETS="unet_forward unet_profile" build
    [ -n "${UNET_PROFILE:-}" ] && build-gpu/bench/unet_profile --case sdxl \
      2>&1 | grep -v Warning | tee "$out/unet-profile.txt"
    build-gpu/bench/unet_forward --case sdxl --mode all --iters 30 \
      --profile "$out/forward" "${@:2}" 2>&1 | grep -v Warning |
      tee "$out/unet-forward.txt"
    for t in "$out"/forward-*.json; do
      [ -f "$t" ] || continue
      echo "== $t"
      python3 bench/trace_summary.py "$t" --top 40 >"${t%.json}.txt"
      head -60 "${t%.json}.txt"
      gzip -f "$t"
    done
    ;;
  checks)
    BUILD_TARGETS="unet_forward lpd-worker" build
    build-gpu/bench/unet_forward --case sdxl --mode graph --iters 10 2>&1 |
      grep -E 'check|fused vs|graph'
    tiny_job 1
    grep -E "CUDA graph" "$out/dp-job-1.log"
    ;;
  final)
    BUILD_TARGETS="distill_step unet_forward lpd-worker" build
    build-gpu/bench/distill_step --case sd15 --steps 10 --check-kernels 2>&1 |
      grep -v Warning | grep -v 'check Float'
    for run in "sd15 off" "sdxl on" "sdxl off" "sdxl-pruned on" \
      "sdxl-pruned off"; do
      set -- $run
      echo "== $1, --concurrent-teacher $2"
      build-gpu/bench/distill_step --case $1 --steps 10 \
        --concurrent-teacher $2 2>&1 | grep -v Warning | tail -2
    done
    tiny_forward_checks
    for run in 1 2; do
      echo "== unet_forward, run $run"
      build-gpu/bench/unet_forward --mode graph --iters 30 2>&1 |
        grep -E '^[A-Z]|graph|check|fused vs'
    done
    ;;
  layout-a)
    BUILD_TARGETS="distill_step unet_forward score_units lpd-worker" build
    tiny_forward_checks
    tiny_job 1
    grep -E "CUDA graph|EXPORT: wrote" "$out/dp-job-1.log"
    for run in 1 2; do
      echo "== unet_forward, run $run"
      build-gpu/bench/unet_forward --mode graph --iters 30 2>&1 |
        grep -E '^[A-Z]|graph|check|fused vs'
    done
    ;;
  layout-b)
    BUILD_TARGETS="distill_step unet_forward score_units lpd-worker" build
    for c in sd15 sdxl sdxl-pruned; do
      echo "== distill_step $c"
      build-gpu/bench/distill_step --case $c --steps 10 2>&1 |
        grep -v Warning | tail -2
    done
    echo "== score_units"
    build-gpu/bench/score_units --case all --device cuda --dtype bf16 2>&1 |
      grep -v Warning | tee "$out/score-units.txt"
    ;;
  *)
    echo "usage: $0 dp|gate|rows|scaling|speed|forward|checks|final|layout-a|layout-b" >&2
    exit 2
    ;;
esac
