#!/usr/bin/env bash
# tiny-unet under every solver with clip_sample=False (issue 17), run on one H200 through the device tool.
# Continues a tiny-unet with Min-SNR-γ weighting and a cosine learning rate, several arms sharing the one GPU at
# once (bf16, the same data seed, MINUTES each), sets "clip_sample": false in every saved scheduler config, then
# evaluates each arm (and INIT with clipping off) on 300 samples (seeds 0-299, --class all, guidance 3.0) under
# DDIM, DPM-Solver++ (2M), Euler and UniPC at 20 and 50 steps, the shipped classifier judging.
#
# Usage: scripts/device_unet_solvers.sh INIT_DIR MINUTES DATA_SEED NAME:LR:BATCH:GAMMA [NAME:LR:BATCH:GAMMA ...]
#   INIT_DIR holds tiny-unet/ (workbench/models for the shipped weights; else a carried folder)
# As run (issue 17, from a snapshot of HEAD with the diffusers wheel in .whl/; `run` carried the snapshot):
#   sweep, runs 3A-3C:  bash scripts/device_unet_solvers.sh workbench/models 6 21 A:3e-4:512:5 B:5e-4:1024:5 C:5e-4:1024:1
#   run 4 (continues 3A, carried as .init/tiny-unet):
#                       SKIP_INIT_EVAL=1 DEADLINE_S=395 bash scripts/device_unet_solvers.sh .init 5 22 D:3e-4:512:5
#   run 5 (continues 4, carried as .init/tiny-unet; shipped):
#                       SKIP_INIT_EVAL=1 DEADLINE_S=520 bash scripts/device_unet_solvers.sh .init 6.3 23 E:3e-4:512:5
# Needs the diffusers wheel in .whl/ (carried; see device_lib.sh). Results come back in $OUT: results.tgz
# (train-*.json/log, eval-*.json, gpu.log), and one models-NAME.tgz per arm (NAME/tiny-unet, fp16 safetensors).
# Environment: DEADLINE_S (default 555: seconds from the start after which evaluation is cut off), SKIP_INIT_EVAL=1
# (evaluate the arms only), TRAIN_ARGS (more `workbench train` arguments for every arm, e.g. --warmup 100; unset
# in all three runs of issue 17), EVAL_N (samples per evaluation, default 300; smaller only to try the script out).
# Measured speed: alone, one arm at batch 512 runs ~10 steps/s with the GPU 50-70 % busy (the Python side limits);
# three arms share it by time-slicing at 100 % busy and ~7 900 images/s in all (4.3 steps/s at 512, 2.8 at 1024).
set -uo pipefail
source "$(dirname "$0")/device_lib.sh"
device_setup
export OMP_NUM_THREADS=4
init=${1:?init dir}; minutes=${2:?minutes}; data_seed=${3:?data seed}; shift 3
root=$PWD; work=/tmp/unet-solvers; rm -rf $work; mkdir -p $work
n_eval=${EVAL_N:-300}  # samples per evaluation (a smaller EVAL_N only for trying the script out)
deadline=${DEADLINE_S:-555}  # seconds after the start by which evaluation stops, so that the results still come back
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 20 >"$work/gpu.log" 2>&1 &
smi=$!

names=(); pids=()
for arm in "$@"; do
  IFS=: read -r name lr batch gamma <<<"$arm"
  names+=("$name")
  python3 -m workbench train --model tiny-unet --init-from "$init/tiny-unet" --loss-weighting min-snr \
    --min-snr-gamma "$gamma" --lr-schedule cosine --time-limit-min "$minutes" --steps 100000 --batch-size "$batch" \
    --lr "$lr" --data-seed "$data_seed" --sample-every 0 --out "$work/$name" --json ${TRAIN_ARGS:-} \
    >"$work/train-$name.json" 2>"$work/train-$name.log" &
  pids+=($!)
done
wait "${pids[@]}"
echo "training done at $(date +%T)"
cd $work
summarise
tar czf "$OUT/results.tgz" train-*.json train-*.log gpu.log  # survives a timed-out evaluation

noclip() {  # the scheduler config of a pipeline folder, with clipping off
  python3 - "$1/scheduler/scheduler_config.json" <<'EOF'
import json, sys
p = sys.argv[1]; c = json.load(open(p)); c["clip_sample"] = False
open(p, "w").write(json.dumps(c, indent=2, sort_keys=True) + "\n")
EOF
}
mkdir -p init && cp -r "$root/$init/tiny-unet" init/tiny-unet && noclip init/tiny-unet
models=()
for name in "${names[@]}"; do
  if [ -f "$name/tiny-unet/unet/diffusion_pytorch_model.safetensors" ]; then
    noclip "$name/tiny-unet"; models+=("$name")
    tar czf "$OUT/models-$name.tgz" "$name/tiny-unet"
  fi
done
[ -n "${SKIP_INIT_EVAL:-}" ] || models+=(init)  # last: the arms matter more if time runs out

# one job per model × solver × steps, 8 at a time (16 CPU cores, 2 threads each); the README's sample command
jobs_file=$work/eval-jobs.txt; : >"$jobs_file"
for m in "${models[@]}"; do for s in ddim dpmpp euler unipc; do for n in 20 50; do
  echo "$m $s $n" >>"$jobs_file"
done; done; done
export work n_eval
cd "$root"  # the workbench package is imported from the snapshot's root
echo "evaluating $(wc -l <"$jobs_file") runs, $((deadline - SECONDS)) s left"
timeout $((deadline - SECONDS)) xargs -P 8 -L 1 bash -c 'OMP_NUM_THREADS=2 timeout 240 python3 -m workbench sample --model "$work/$0/tiny-unet" \
  --class all --n "$n_eval" --steps "$2" --scheduler "$1" --json >"$work/eval-$0-$1-$2.json" 2>>"$work/eval.log"' \
  <"$jobs_file"
echo "evaluation done at $(date +%T)"
kill "$smi" 2>/dev/null
cd $work
python3 - "${models[@]}" <<'EOF'
import json, sys
print(f"{'model':8s}" + "".join(f"{s + '-' + str(n):>11s}" for s in ("ddim", "dpmpp", "euler", "unipc") for n in (20, 50)))
for m in sys.argv[1:]:
    row = []
    for s in ("ddim", "dpmpp", "euler", "unipc"):
        for n in (20, 50):
            try:
                d = json.load(open(f"eval-{m}-{s}-{n}.json"))
                row.append(f"{d['class_accuracy']:.3f}/{d['fd_shapes']:.2f}")
            except Exception:
                row.append("failed")
    print(f"{m:8s}" + "".join(f"{r:>11s}" for r in row))
EOF
tar czf "$OUT/results.tgz" train-*.json train-*.log gpu.log eval-*.json eval.log 2>/dev/null
ls -la "$OUT"
