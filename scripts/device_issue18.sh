#!/usr/bin/env bash
# Issue 17/18 quality suites on one H200 within a few minutes of device time (device tool; $OUT comes back):
# quality-vs-latency per model without Auto-FR (its training alone takes ~90 s per configuration there; the Auto-FR
# rows come from `bench autofr`), then schedulers for both models, then the CUDA-graph test of tests/test_compiling.py.
# Each part has its own time limit so a slow one leaves the others' JSON. Wheels: .whl/ as in scripts/device_bench.sh
# (diffusers, zarr, numcodecs, donfig, google-crc32c, DeepCache). Usage: scripts/device_issue18.sh [quality|sched|all]
# (quality: the two quality-vs-latency parts only; session 8's call, with the W2+last rows and whole-step plans;
# sched: the schedulers suite only, 64 seeds — session 9's call, with the x̂₀ rows).
set -uo pipefail
OUT=${OUT:-/tmp/bench}
source scripts/device_lib.sh
device_setup
start=$(date +%s)
part() { local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; echo "$name exit $? at $(( $(date +%s) - start )) s"; }
parts=${1:-all}
if [ "$parts" = sched ]; then
  part sched 420 python3 -m workbench bench schedulers --models tiny-unet,tiny-dit --seeds 64 --device cuda \
    --repeats 1 --out "$OUT/sched" --json
  tail -n 3 "$OUT"/*.log; exit 0
fi
part q-unet 260 python3 -m workbench bench quality-vs-latency --models tiny-unet --seeds 64 --device cuda --no-autofr \
  --repeats 1 --out "$OUT/q-unet" --json
part q-dit 220 python3 -m workbench bench quality-vs-latency --models tiny-dit --seeds 64 --device cuda --no-autofr \
  --repeats 1 --out "$OUT/q-dit" --json
[ "$parts" = quality ] && { tail -n 3 "$OUT"/*.log; exit 0; }
part sched 60 python3 -m workbench bench schedulers --models tiny-unet,tiny-dit --seeds 64 --device cuda --repeats 1 \
  --out "$OUT/sched" --json
part cudagraphs 40 python3 -m pytest -q -p no:cacheprovider tests/test_compiling.py -k cuda_graphs -rs
tail -n 3 "$OUT"/*.log
