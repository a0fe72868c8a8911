#!/usr/bin/env bash
# Throughput of the `run` path on 1 GPU vs 2 GPUs (torchrun, NCCL): SD-1.5-architecture UNet, random weights, fp16,
# 512 px, CFG; variants none and uniform M=2; the same images in total on both (docs/distributed.md).
# Usage on a 2-GPU machine (device tool; $OUT comes back):  bash scripts/device_throughput.sh [SEEDS] [STEPS]
# The GPU machine has torch but neither diffusers nor zarr: carry the diffusers wheel in .whl/ (see device_train.sh).
# Writes $OUT/run-throughput-1gpu.json, $OUT/run-throughput-2gpu.json and $OUT/run-throughput.json (both + ratios).
set -uo pipefail
OUT=${OUT:-/tmp/throughput}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
fi
SEEDS=${1:-32}
STEPS=${2:-50}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
ARGS=(--seeds "$SEEDS" --steps "$STEPS" --batch-size "${BATCH:-16}" --repeats 1)
[ -n "${SMALL:-}" ] && ARGS+=(--small)  # plumbing check on a CPU: SMALL=1 BATCH=2 bash scripts/device_throughput.sh 4 4
timeout 170 python3 -m workbench.bench.throughput "${ARGS[@]}" >"$OUT/run-throughput-1gpu.json" \
  2>"$OUT/run-throughput-1gpu.log" || { echo "1-GPU run failed:"; tail -n 20 "$OUT/run-throughput-1gpu.log"; exit 1; }
timeout 170 python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m workbench.bench.throughput \
  "${ARGS[@]}" >"$OUT/run-throughput-2gpu.json" 2>"$OUT/run-throughput-2gpu.log" \
  || { echo "2-GPU run failed:"; tail -n 20 "$OUT/run-throughput-2gpu.log"; exit 1; }
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
one = json.loads((out / "run-throughput-1gpu.json").read_text())
two = json.loads((out / "run-throughput-2gpu.json").read_text())
ratios = {v: two["variants"][v]["images_per_s"] / one["variants"][v]["images_per_s"] for v in one["variants"]}
summary = {"suite": "run-throughput", "device": one["device"], "torch": one["torch"], "images": one["images"],
           "steps": one["steps"], "batch_size": one["batch_size"], "one_gpu": one, "two_gpus": two,
           "speedup_2_over_1": ratios, "target": 1.8, "meets_target": all(r >= 1.8 for r in ratios.values())}
(out / "run-throughput.json").write_text(json.dumps(summary, indent=2) + "\n")
for v, r in ratios.items():
    print(f"{v:12s} 1 GPU {one['variants'][v]['images_per_s']:7.3f} img/s   2 GPUs "
          f"{two['variants'][v]['images_per_s']:7.3f} img/s   ratio {r:.2f}x")
print("meets the 1.8x target:", summary["meets_target"])
EOF
