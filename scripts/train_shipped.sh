#!/usr/bin/env bash
# Train the three shipped models on one GPU at once (classifier and both denoisers in parallel), then evaluate.
# Environment: MODELS (default "tiny-unet tiny-dit"), LR (default 3e-4), SAMPLE_EVERY (checkpoint interval,
# default 4000), TRAIN_ARGS (more arguments for `workbench train`, e.g. --fp32).
# Usage: scripts/train_shipped.sh WORK_DIR [MINUTES] [INIT_DIR] [DATA_SEED]
#   MINUTES: wall-clock budget per denoiser (default 7); INIT_DIR: folder with tiny-unet/ tiny-dit/ to continue
#   from; DATA_SEED: seed of the training images (use a new one when continuing, so batches are not repeated).
set -euo pipefail
work=${1:?work dir}; minutes=${2:-7}; init=${3:-}; data_seed=${4:-1}
mkdir -p "$work"
export PYTHONUNBUFFERED=1
init_args() { [ -n "$init" ] && echo "--init-from $init/$1" || true; }
if [ ! -f workbench/models/shape-classifier/diffusion_pytorch_model.safetensors ]; then
  python3 -m workbench train --model shape-classifier --steps 4000 --lr 1e-3 --warmup 200 --time-limit-min 2.5 \
    --out "$work" --json >"$work/log-classifier.txt" 2>&1 &
fi
for m in ${MODELS:-tiny-unet tiny-dit}; do
  python3 -m workbench train --model "$m" --steps 100000 --time-limit-min "$minutes" $(init_args "$m") \
    --data-seed "$data_seed" --batch-size 512 --lr "${LR:-3e-4}" ${TRAIN_ARGS:-} --out "$work" --sample-every "${SAMPLE_EVERY:-4000}" --json \
    >"$work/log-$m.txt" 2>&1 &
done
wait
if [ -d "$work/shape-classifier" ]; then
  mkdir -p workbench/models && rm -rf workbench/models/shape-classifier
  cp -r "$work/shape-classifier" workbench/models/shape-classifier
fi
for m in ${MODELS:-tiny-unet tiny-dit}; do
  for g in 2 3 4; do
    python3 -m workbench sample --model "$work/$m" --class all --n 300 --steps 50 --guidance $g --json \
      >"$work/eval-$m-g$g.json" 2>>"$work/log-eval.txt" || true
  done
done
tail -n 3 "$work"/log-*.txt; cat "$work"/eval-*.json
