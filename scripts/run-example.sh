#!/usr/bin/env bash
# The main job: builds lpd (installing what is missing on Debian 12), runs one
# forward pass of each reference U-Net (SD-v1.5 and SDXL layouts) on its
# reference inputs, with and without a set of units removed (outputs under
# out/example/), then compresses the tiny SD-v1.5-layout U-Net end to end
# through the service: a local lpd-scheduler (SQLite job store under
# /tmp/lpd/stack/) and two CPU `lpd-worker serve` processes on a free
# loopback port (deploy/local/run-stack.sh), `lpdctl submit
# deploy/examples/tiny-cpu.yaml --watch` (SCORE on both workers, SELECT on the
# scheduler, DISTILL, EVALUATE, EXPORT), then the artifacts under
# /tmp/lpd/out/tiny-cpu/ (plan.json, report.json, final/). The processes are
# stopped with SIGTERM at the end, and on any failure or Ctrl-C.
#
# Environment: LPD_BUILD_DIR (default build), LPD_TESTDATA (default
# ../shared/testdata), LPD_WORKERS (default 2), LPD_DEVICE (workers'
# --device: cpu by default; auto or cuda for a GPU build),
# LPD_EXAMPLE_TIMEOUT (seconds the job may take, default 1200).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
build_dir=${LPD_BUILD_DIR:-build}
# The service's three binaries (build.sh builds every target; this says so
# explicitly and is a no-op when they are there).
cmake --build "$build_dir" --target lpd-scheduler lpd-worker lpdctl
testdata=${LPD_TESTDATA:-../shared/testdata}/unet-golden
if [ ! -d "$testdata" ]; then
  echo "reference models not found at $testdata (set LPD_TESTDATA)" >&2
  exit 1
fi
worker=$build_dir/worker/lpd-worker
lpdctl=$build_dir/client/lpdctl
out=out/example
mkdir -p "$out"
set -x
"$worker" forward --model "$testdata/tiny-sd15" \
  --inputs "$testdata/tiny-sd15/vectors.safetensors" --out "$out/tiny-sd15.safetensors"
"$worker" forward --model "$testdata/tiny-sd15" \
  --inputs "$testdata/tiny-sd15/vectors.safetensors" \
  --remove down_blocks.0.resnets.1,up_blocks.1.attentions.1 \
  --out "$out/tiny-sd15-pruned.safetensors"
"$worker" forward --model "$testdata/tiny-sdxl" \
  --inputs "$testdata/tiny-sdxl/vectors.safetensors" --out "$out/tiny-sdxl.safetensors"
"$worker" units --model "$testdata/tiny-sdxl" --granularity resnet,transformer_block
# A synthetic training set that fits the SDXL-layout model (the format the
# distillation reads).
rm -rf "$out/synth-sdxl"
"$worker" synth-dataset --model "$testdata/tiny-sdxl" --samples 16 --out "$out/synth-sdxl"
# The tiny SD-v1.5-layout U-Net and its training set where
# deploy/examples/tiny-cpu.yaml reads them (under /tmp/lpd), from scratch.
work=/tmp/lpd
mkdir -p "$work"
ln -sfn "$(realpath "$testdata/tiny-sd15")" "$work/tiny-sd15"
if [ ! -f "$work/tiny-data/dataset.json" ]; then
  rm -rf "$work/tiny-data"
  "$worker" synth-dataset --model "$work/tiny-sd15" --samples 64 \
    --latent-size 16 --seq-len 7 --out "$work/tiny-data"
fi
rm -rf "$work/out/tiny-cpu" "$work/stack"
set +x

# The service on loopback: a scheduler with a fresh job store and the
# workers, in the background; stopped (SIGTERM) however this script ends.
stack=$work/stack
mkdir -p "$stack"
echo "+ deploy/local/run-stack.sh (scheduler + ${LPD_WORKERS:-2} workers, --device ${LPD_DEVICE:-cpu}); log: $stack/run-stack.log"
deploy/local/run-stack.sh --build-dir "$build_dir" --workers "${LPD_WORKERS:-2}" \
  --device "${LPD_DEVICE:-cpu}" --address-file "$stack/address" "$stack" \
  >"$stack/run-stack.log" 2>&1 &
stack_pid=$!
show_logs() {
  local log
  for log in "$stack/run-stack.log" "$stack"/logs/*.log; do
    [ -f "$log" ] || continue
    echo "--- $log (last 30 lines)" >&2
    tail -n 30 "$log" >&2
  done
}
stop_stack() {
  if kill -0 "$stack_pid" 2>/dev/null; then
    echo "+ stopping the service (SIGTERM)"
    kill -TERM "$stack_pid" 2>/dev/null || true
  fi
  wait "$stack_pid" 2>/dev/null || true
}
trap stop_stack EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

deadline=$((SECONDS + 120))
until [ -s "$stack/address" ]; do
  if ! kill -0 "$stack_pid" 2>/dev/null || ((SECONDS >= deadline)); then
    echo "run-example.sh: the service did not start" >&2
    show_logs
    exit 1
  fi
  sleep 0.2
done
address=$(<"$stack/address")
echo "+ lpd-scheduler at $address, state in $stack/state"

echo "+ $lpdctl submit deploy/examples/tiny-cpu.yaml --watch --server $address"
if ! timeout --foreground "${LPD_EXAMPLE_TIMEOUT:-1200}" "$lpdctl" submit deploy/examples/tiny-cpu.yaml \
  --watch --server "$address" | tee "$stack/submit.log"; then
  echo "run-example.sh: the job did not succeed" >&2
  show_logs
  exit 1
fi
job_id=$(head -n 1 "$stack/submit.log")
echo "+ $lpdctl get $job_id"
"$lpdctl" get "$job_id" --server "$address"
echo "+ $lpdctl list"
"$lpdctl" list --server "$address"

# The artifacts, where the job wrote them.
output_uri=$("$lpdctl" get "$job_id" --json --server "$address" |
  python3 -c 'import json, sys; print(json.load(sys.stdin).get("output_uri", ""))')
artifacts=${output_uri#file://}
artifacts=${artifacts:-$work/out/tiny-cpu/}
echo "+ artifacts in $artifacts"
(cd "$artifacts" && find . -maxdepth 2 | sort)
python3 - "$artifacts" <<'EOF'
import json, os, sys
root = sys.argv[1]
plan = json.load(open(os.path.join(root, "plan.json")))
print(f"plan.json: {len(plan['removed'])} units removed, "
      f"{plan['removed_params']} of {plan['total_params']} parameters "
      f"({100 * plan['achieved_ratio']:.1f}%, target "
      f"{100 * plan['target_ratio']:.0f}%), predicted loss "
      f"{plan['predicted_loss']:.4g}")
for unit in plan["removed"]:
    print("  -", unit if isinstance(unit, str) else unit.get("id", unit))
report = json.load(open(os.path.join(root, "report.json")))
print(f"report.json: relative output error {report['relative_error']:.4f}, "
      f"denoising loss student {report['student_loss']:.4f} / teacher "
      f"{report['teacher_loss']:.4f} on {report['samples']} held-out samples")
print("final/:", ", ".join(sorted(os.listdir(os.path.join(root, "final")))))
EOF
stop_stack
trap - EXIT
echo "+ done: the service stopped; artifacts in $artifacts"
