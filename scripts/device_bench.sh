#!/usr/bin/env bash
# The full-size quality suites on a 2-GPU machine (device tool; $OUT comes back), one model per GPU:
#   GPU 0: bench quality-vs-latency --models tiny-unet
#   GPU 1: bench quality-vs-latency --models tiny-dit, then bench schedulers for tiny-dit and for tiny-unet
# The GPU machine has torch, scipy and scikit-image but not diffusers, zarr (+ numcodecs, donfig, google-crc32c) or
# DeepCache: carry their wheels in .whl/ (git-ignored), made as in scripts/device_train.sh.
# Usage: bash scripts/device_bench.sh [SECONDS_PER_GPU]
set -uo pipefail
OUT=${OUT:-/tmp/bench}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
limit=${1:-420}
nvidia-smi --query-gpu=name --format=csv,noheader
bench() { python3 -m workbench bench "$@" --repeats 1 --device cuda --json >/dev/null; }
start=$(date +%s)
( CUDA_VISIBLE_DEVICES=0 timeout "$limit" bash -c "$(declare -f bench); bench quality-vs-latency --models tiny-unet \
    --out $OUT/unet" >"$OUT/log-gpu0.txt" 2>&1; echo "gpu0 exit $? after $(( $(date +%s) - start )) s" ) &
( CUDA_VISIBLE_DEVICES=1 timeout "$limit" bash -c "$(declare -f bench); bench quality-vs-latency --models tiny-dit \
    --out $OUT/dit && bench schedulers --models tiny-dit --out $OUT/dit && \
    bench schedulers --models tiny-unet --out $OUT/unet" >"$OUT/log-gpu1.txt" 2>&1;
  echo "gpu1 exit $? after $(( $(date +%s) - start )) s" ) &
wait
tail -n 5 "$OUT"/log-gpu*.txt
ls -la "$OUT"/*
