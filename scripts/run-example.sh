#!/usr/bin/env bash
# The main job: builds lpd (installing what is missing on Debian 12), runs one
# forward pass of each reference U-Net (SD-v1.5 and SDXL layouts) on its
# reference inputs, with and without a set of units removed (outputs under
# out/example/), then compresses the tiny SD-v1.5-layout U-Net end to end
# with `lpd-worker run deploy/examples/tiny-cpu.yaml` (SCORE, SELECT,
# DISTILL, EVALUATE, EXPORT; artifacts under /tmp/lpd/out/tiny-cpu/).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
testdata=${LPD_TESTDATA:-../shared/testdata}/unet-golden
if [ ! -d "$testdata" ]; then
  echo "reference models not found at $testdata (set LPD_TESTDATA)" >&2
  exit 1
fi
worker=${LPD_BUILD_DIR:-build}/worker/lpd-worker
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
# The whole pipeline on the tiny SD-v1.5-layout U-Net (deploy/examples/
# tiny-cpu.yaml reads its model and data under /tmp/lpd), from scratch.
mkdir -p /tmp/lpd
ln -sfn "$(realpath "$testdata/tiny-sd15")" /tmp/lpd/tiny-sd15
if [ ! -f /tmp/lpd/tiny-data/dataset.json ]; then
  rm -rf /tmp/lpd/tiny-data
  "$worker" synth-dataset --model /tmp/lpd/tiny-sd15 --samples 64 \
    --latent-size 16 --seq-len 7 --out /tmp/lpd/tiny-data
fi
rm -rf /tmp/lpd/out/tiny-cpu
"$worker" run deploy/examples/tiny-cpu.yaml --log-every 10
