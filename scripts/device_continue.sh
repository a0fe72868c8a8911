#!/usr/bin/env bash
# Four tiny-dit continuations of INIT_DIR/tiny-dit on a 4-GPU machine (device tool), one per GPU, bf16, Min-SNR-5,
# cosine learning rate, MINUTES each; each evaluated on 600 samples from seed 5000 (selection) and 600 from seed 9000
# (confirmation), 50 DDIM steps, guidance 2, the shipped classifier.
# Usage: scripts/device_continue.sh INIT_DIR [MINUTES] [DATA_SEED]     (INIT_DIR holds tiny-dit/; carry it)
set -uo pipefail
source "$(dirname "$0")/device_lib.sh"
device_setup
export OMP_NUM_THREADS=8
init=${1:?init dir}; minutes=${2:-5}; data_seed=${3:-11}
work=/tmp/continue; rm -rf $work; mkdir -p $work
train() {
  local name=$1 gpu=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu python3 -m workbench train --model tiny-dit --init-from "$init/tiny-dit" \
    --steps 100000 --time-limit-min "$minutes" --data-seed "$data_seed" --sample-every 0 \
    --loss-weighting min-snr --lr-schedule cosine --out "$work/$name" --json "$@" \
    >"$work/train-$name.json" 2>"$work/train-$name.log" &
}
train e-lr3 0 --lr 3e-4 --batch-size 512
train f-lr1 1 --lr 1e-4 --batch-size 512
train g-lr3-b1024 2 --lr 3e-4 --batch-size 1024
train h-lr2-ema9995 3 --lr 2e-4 --batch-size 512 --ema-decay 0.9995
wait
echo "training done at $(date +%T)"
(cd $work && tar czf "$OUT/results.tgz" train-*.json train-*.log)
evaluate() {
  CUDA_VISIBLE_DEVICES=$2 timeout 90 python3 -m workbench sample --model "$3" --class all --n 600 --steps 50 \
    --guidance 2 --seed "$4" --json --out "$work/grid-$1.png" >"$work/eval-$1.json" 2>>"$work/eval.log" &
}
for seed in 5000 9000; do
  i=0
  for run in e-lr3 f-lr1 g-lr3-b1024 h-lr2-ema9995; do evaluate "$run-s$seed" $i "$work/$run/tiny-dit" $seed; i=$((i + 1)); done
  wait
done
evaluate init-s9000 0 "$init/tiny-dit" 9000; wait
echo "evaluation done at $(date +%T)"
cd $work
summarise
tar czf "$OUT/results.tgz" *.json *.log grid-*.png 2>/dev/null
tar czf "$OUT/models-ef.tgz" e-lr3/tiny-dit f-lr1/tiny-dit 2>/dev/null
tar czf "$OUT/models-gh.tgz" g-lr3-b1024/tiny-dit h-lr2-ema9995/tiny-dit 2>/dev/null
ls -la "$OUT"
