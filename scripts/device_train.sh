#!/usr/bin/env bash
# What was run on the GPU machine to produce the shipped weights (device tool; $OUT comes back).
# Usage: scripts/device_train.sh MINUTES [INIT_DIR] [DATA_SEED]
# The GPU machine has torch but not diffusers: carry its wheel in .whl/ (git-ignored via .git/info/exclude), made with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
work=/tmp/work-$(date +%s)
timeout 570 bash scripts/train_shipped.sh "$work" "${1:-6.5}" "${2:-}" "${3:-1}" >"$work.log" 2>&1
echo "train_shipped exit $?"; tail -n 40 "$work.log"
cd "$work" && rm -rf /tmp/work-last && ln -s "$work" /tmp/work-last
for m in tiny-unet tiny-dit shape-classifier; do [ -d $m ] && tar czf "$OUT/$m.tgz" $m; done
tar czf "$OUT/extras.tgz" *.png *.txt *.json "$work.log" 2>/dev/null
ls -la "$OUT"
