#!/usr/bin/env bash
# Runs the quality study (studies/quality/quality_study, docs/quality.md) split over the
# GPUs of one host, several processes per GPU (a row is launch-bound: one
# process leaves the GPU mostly idle).
#
#   studies/quality/quality_study_gpus.sh gate BUILD OUT [FLAGS...]
#       the --gate-only run on GPU 0: trains (or, with --teacher, loads) the
#       teacher, trains and saves the classifier, gates the teacher with the
#       guidance sweep, measures additivity; log in OUT/logs/gate.log.
#       Exit 3 when the teacher fails the gate.
#   studies/quality/quality_study_gpus.sh rows BUILD OUT [PER_GPU] [FLAGS...]
#       the 27 (row, seed) pairs (9 rows x seeds 0..2), dealt round-robin
#       over GPUs x PER_GPU (default 3) process slots; each slot is one
#       --rows-only process (CUDA_VISIBLE_DEVICES=its GPU) running its pairs
#       one after another, logging to OUT/logs/rows-gpuG-pJ.log; waits for
#       all, names the failed ones (exit 1), then writes OUT/table.md with
#       studies/quality/quality_table.py and the additivity plot to
#       OUT/quality-additivity.svg, copied to docs/quality-additivity.svg
#       (or to --svg PATH).
#
# FLAGS go to every quality_study process (give both steps the same data and
# sampling flags: the rows check them against OUT/study.json). The script's
# own options: --dry-run (print the assignment and commands, run nothing),
# --gpus N (instead of counting `nvidia-smi -L`), --svg PATH (rows: where the
# plot is copied). Without --threads in FLAGS
# each rows process gets --threads nproc/(slots).
#
#   studies/quality/quality_study_gpus.sh gate build-gpu out/quality
#   studies/quality/quality_study_gpus.sh rows build-gpu out/quality 3
set -euo pipefail

ROWS=(rh-output_loss-nkd rh-output_loss-pkd rh-magnitude-nkd rh-random-nkd
  rh-handcrafted-nkd r50-output_loss-nkd r50-output_loss-pkd
  r50-magnitude-nkd r50-random-nkd)
SEEDS=(0 1 2)

die() {
  echo "quality_study_gpus: $*" >&2
  exit 2
}

[[ $# -ge 3 ]] || die "usage: $0 gate|rows BUILD OUT [PER_GPU] [FLAGS...]"
step=$1 build=$2 out=$3
shift 3
per_gpu=3
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  per_gpu=$1
  shift
fi
[[ $per_gpu -ge 1 ]] || die "PER_GPU must be at least 1"
dry_run=0 gpus="" svg="" extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --gpus) [[ $# -ge 2 ]] || die "--gpus needs a value"; gpus=$2; shift ;;
    --gpus=*) gpus=${1#--gpus=} ;;
    --svg) [[ $# -ge 2 ]] || die "--svg needs a value"; svg=$2; shift ;;
    *) extra+=("$1") ;;
  esac
  shift
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
svg=${svg:-$repo/docs/quality-additivity.svg}
bin=$build/studies/quality/quality_study
if [[ -z $gpus ]]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi
[[ $gpus =~ ^[0-9]+$ && $gpus -ge 1 ]] ||
  die "no GPU found (nvidia-smi -L); pass --gpus N"
if [[ $dry_run == 0 ]]; then
  [[ -x $bin ]] || die "$bin not found: build the quality_study target first"
  mkdir -p "$out/logs"
fi

case $step in
  gate)
    cmd=("$bin" --out "$out" --gate-only "${extra[@]}")
    if [[ $dry_run == 1 ]]; then
      echo "CUDA_VISIBLE_DEVICES=0 ${cmd[*]}"
      exit 0
    fi
    set +e
    CUDA_VISIBLE_DEVICES=0 "${cmd[@]}" 2>&1 | tee "$out/logs/gate.log"
    rc=${PIPESTATUS[0]}
    set -e
    [[ $rc == 0 ]] || echo "quality_study_gpus: the gate run exited $rc" \
      "(3: the teacher failed the gate; see $out/study.json)" >&2
    exit "$rc"
    ;;
  rows) ;;
  *) die "unknown step '$step' (gate or rows)" ;;
esac

slots=$((gpus * per_gpu))
# Pair i goes to slot i % slots; slot k runs on GPU k % gpus as its process
# k / gpus, so the slots with one pair more sit on different GPUs.
assignment=()
i=0
for seed in "${SEEDS[@]}"; do
  for row in "${ROWS[@]}"; do
    k=$((i % slots))
    assignment[k]="${assignment[k]:+${assignment[k]},}$row:$seed"
    i=$((i + 1))
  done
done
threads=()
if [[ " ${extra[*]} " != *" --threads"* ]]; then
  cores=$(nproc)
  t=$((cores / slots))
  threads=(--threads $((t > 0 ? t : 1)))
fi

pids=() names=()
[[ $dry_run == 1 || -f $out/study.json ]] ||
  die "$out/study.json not found: run the gate step first"
start=$(date +%s)
for ((k = 0; k < slots; ++k)); do
  [[ -n ${assignment[k]:-} ]] || continue
  g=$((k % gpus)) j=$((k / gpus))
  name=gpu$g-p$j
  cmd=("$bin" --out "$out" --rows-only --row-seeds "${assignment[k]}"
    --run-name "$name" "${threads[@]}" "${extra[@]}")
  if [[ $dry_run == 1 ]]; then
    echo "$name: ${assignment[k]}"
    echo "  CUDA_VISIBLE_DEVICES=$g ${cmd[*]}"
    continue
  fi
  CUDA_VISIBLE_DEVICES=$g "${cmd[@]}" >"$out/logs/rows-$name.log" 2>&1 &
  pids+=($!)
  names+=("$name")
done
[[ $dry_run == 0 ]] || exit 0
echo "quality_study_gpus: ${#pids[@]} processes on $gpus GPUs ($per_gpu per" \
  "GPU) for $i row-seeds; logs in $out/logs/"

# Progress every 30 s until every process has ended.
last=$start
while :; do
  alive=0
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then alive=$((alive + 1)); fi
  done
  [[ $alive -gt 0 ]] || break
  sleep 5
  now=$(date +%s)
  if ((now - last >= 30)); then
    last=$now
    reports=$(find "$out" -path '*/seed-*/report.json' -newermt "@$start" \
      2>/dev/null | wc -l)
    echo "quality_study_gpus: $((now - start))s: $reports/$i reports," \
      "$alive processes running"
  fi
done
failed=0
for idx in "${!pids[@]}"; do
  rc=0
  wait "${pids[idx]}" || rc=$?
  if [[ $rc != 0 ]]; then
    failed=$((failed + 1))
    echo "quality_study_gpus: ${names[idx]} exited $rc; its log ends:" >&2
    tail -n 5 "$out/logs/rows-${names[idx]}.log" | sed 's/^/    /' >&2
  fi
done
echo "quality_study_gpus: rows took $(($(date +%s) - start))s"

table_rc=0 plot=()
if [[ -f $out/additivity.csv ]]; then plot=(--svg "$out/quality-additivity.svg"); fi
python3 "$repo/studies/quality/quality_table.py" "$out" --out "$out/table.md" \
  "${plot[@]}" || table_rc=$?
if [[ $table_rc == 0 ]]; then
  if [[ ${#plot[@]} -gt 0 ]]; then cp "$out/quality-additivity.svg" "$svg"; fi
  cat "$out/table.md"
fi
if [[ $failed -gt 0 ]]; then
  echo "quality_study_gpus: $failed of ${#pids[@]} processes failed" >&2
  exit 1
fi
exit "$table_rc"
