#!/usr/bin/env bash
# Four tiny-dit continuations on a 4-GPU machine (device tool), one per GPU, each for MINUTES in bf16 with Min-SNR-5
# weighting and a cosine learning rate, then each evaluated on the same 600 samples (seeds 5000-5599, 50 DDIM steps,
# guidance 2, the shipped classifier): a control without a teacher, and distillation from the shipped tiny-unet.
# Usage: scripts/device_distill.sh INIT_DIR [MINUTES] [DATA_SEED]     (INIT_DIR holds tiny-dit/; carry it)
set -uo pipefail
source "$(dirname "$0")/device_lib.sh"
device_setup
export OMP_NUM_THREADS=8
init=${1:?init dir}; minutes=${2:-7.6}; data_seed=${3:-10}
work=/tmp/distill; rm -rf $work; mkdir -p $work

# name gpu [train arguments...]
train() {
  local name=$1 gpu=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu python3 -m workbench train --model tiny-dit --init-from "$init/tiny-dit" \
    --steps 100000 --batch-size 512 --time-limit-min "$minutes" --data-seed "$data_seed" --sample-every 4000 \
    --loss-weighting min-snr --lr-schedule cosine --out "$work/$name" --json "$@" \
    >"$work/train-$name.json" 2>"$work/train-$name.log" &
}
train a-control 0 --lr 3e-4
train b-distill1 1 --lr 3e-4 --teacher tiny-unet --distill-weight 1
train c-distill05 2 --lr 3e-4 --teacher tiny-unet --distill-weight 0.5
train d-distill1-lr6 3 --lr 6e-4 --teacher tiny-unet --distill-weight 1
wait
echo "training done at $(date +%T)"
(cd $work && tar czf "$OUT/results.tgz" train-*.json train-*.log)  # survives a timed-out evaluation

# name gpu model guidance
evaluate() {
  CUDA_VISIBLE_DEVICES=$2 timeout 100 python3 -m workbench sample --model "$3" --class all --n 600 --steps 50 \
    --guidance "$4" --seed 5000 --json --out "$work/grid-$1.png" >"$work/eval-$1.json" 2>>"$work/eval.log" &
}
i=0
for run in a-control b-distill1 c-distill05 d-distill1-lr6; do
  evaluate "$run-g2" $i "$work/$run/tiny-dit" 2; i=$((i + 1))
done
wait
evaluate teacher-unet 0 tiny-unet 3
evaluate init-g2 1 "$init/tiny-dit" 2
wait
echo "evaluation done at $(date +%T)"
cd $work
summarise
tar czf "$OUT/results.tgz" *.json *.log grid-*.png */*.png 2>/dev/null
tar czf "$OUT/models-ab.tgz" a-control/tiny-dit b-distill1/tiny-dit 2>/dev/null
tar czf "$OUT/models-cd.tgz" c-distill05/tiny-dit d-distill1-lr6/tiny-dit 2>/dev/null
ls -la "$OUT"
