#!/usr/bin/env bash
# Recipe sweep for the shipped denoisers (issue 2), run on a 4-GPU machine through the device tool:
# eight continuations of the shipped weights, two per GPU, each trained for MINUTES with the same data seed, then
# each evaluated (and the shipped weights too) on the same 600 samples: 50 DDIM steps, the shipped classifier.
# Usage: scripts/device_sweep.sh [MINUTES] [DATA_SEED]      (results and models come back under $OUT)
set -uo pipefail
source "$(dirname "$0")/device_lib.sh"
device_setup
minutes=${1:-6.5}; data_seed=${2:-9}
work=/tmp/sweep; rm -rf $work; mkdir -p $work

# name gpu model [train arguments...]
train() {
  local name=$1 gpu=$2 model=$3; shift 3
  CUDA_VISIBLE_DEVICES=$gpu python3 -m workbench train --model "$model" --init-from "workbench/models/$model" \
    --steps 100000 --batch-size 512 --time-limit-min "$minutes" --data-seed "$data_seed" --sample-every 3000 \
    --out "$work/$name" --json "$@" >"$work/train-$name.json" 2>"$work/train-$name.log" &
}
train A-const 0 tiny-dit --fp32 --lr 3e-4
train B-cos 0 tiny-dit --fp32 --lr 3e-4 --lr-schedule cosine
train C-snr 1 tiny-dit --fp32 --lr 3e-4 --loss-weighting min-snr
train D-snr-cos 1 tiny-dit --fp32 --lr 3e-4 --loss-weighting min-snr --lr-schedule cosine
train E-snr-cos-b1024 2 tiny-dit --fp32 --lr 5e-4 --loss-weighting min-snr --lr-schedule cosine --batch-size 1024
train F-snr-cos-lr6 2 tiny-dit --fp32 --lr 6e-4 --loss-weighting min-snr --lr-schedule cosine
train G-unet-snr-cos 3 tiny-unet --lr 3e-4 --loss-weighting min-snr --lr-schedule cosine
train H-snr-cos-bf16 3 tiny-dit --lr 3e-4 --loss-weighting min-snr --lr-schedule cosine
wait
echo "training done at $(date +%T)"
(cd $work && tar czf "$OUT/results.tgz" train-*.json train-*.log)  # survives a timed-out evaluation

# name gpu model-dir guidance scheduler
evaluate() {
  CUDA_VISIBLE_DEVICES=$2 timeout 150 python3 -m workbench sample --model "$3" --class all --n 600 --steps 50 \
    --guidance "$4" --scheduler "$5" --seed 5000 --json --out "$work/grid-$1.png" >"$work/eval-$1.json" 2>>"$work/eval.log" &
}
evaluate shipped-dit-g2 0 workbench/models/tiny-dit 2 ddim
evaluate shipped-dit-g3 0 workbench/models/tiny-dit 3 ddim
i=0
for run in A-const B-cos C-snr D-snr-cos E-snr-cos-b1024 F-snr-cos-lr6 H-snr-cos-bf16; do
  evaluate "$run-g2" $((i % 4)) "$work/$run/tiny-dit" 2 ddim
  evaluate "$run-g3" $(((i + 1) % 4)) "$work/$run/tiny-dit" 3 ddim
  i=$((i + 1))
done
wait
for s in ddim euler dpmpp; do
  evaluate "shipped-unet-$s" 1 workbench/models/tiny-unet 3 $s
  evaluate "G-unet-snr-cos-$s" 2 "$work/G-unet-snr-cos/tiny-unet" 3 $s
done
wait
echo "evaluation done at $(date +%T)"
cd $work
summarise
tar czf "$OUT/results.tgz" *.json *.log grid-*.png */*.png 2>/dev/null
tar czf "$OUT/models-1.tgz" A-const/tiny-dit B-cos/tiny-dit C-snr/tiny-dit 2>/dev/null
tar czf "$OUT/models-2.tgz" D-snr-cos/tiny-dit E-snr-cos-b1024/tiny-dit F-snr-cos-lr6/tiny-dit 2>/dev/null
tar czf "$OUT/models-3.tgz" G-unet-snr-cos/tiny-unet H-snr-cos-bf16/tiny-dit 2>/dev/null
ls -la "$OUT"
