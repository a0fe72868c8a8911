#!/usr/bin/env bash
# Issue 20: train tiny-sd and the scene judge on one GPU, then judge tiny-sd under four solvers (device tool; $OUT
# comes back). Usage: scripts/device_tiny_sd.sh VAE_MINUTES DIFFUSION_MINUTES [INIT_DIR]
# Wheels: .whl/ holds diffusers==0.42.1 (as in scripts/device_train.sh); the GPU machine has torch and transformers.
set -uo pipefail
source scripts/device_lib.sh
device_setup
python3 -c "import transformers, tokenizers; print('transformers', transformers.__version__, 'tokenizers', tokenizers.__version__)"
repo=$PWD; work=/tmp/sd-$(date +%s); mkdir -p "$work"
vae_min=${1:-1.75}; diff_min=${2:-5}; init=${3:-}
# The scene judge trains beside tiny-sd on the same GPU, unless the tree already ships one (it is then used as is).
judge=
if [ ! -f workbench/models/scene-judge/diffusion_pytorch_model.safetensors ]; then
  python3 -m workbench train --model scene-judge --steps 6000 --batch-size 256 --lr 1e-3 --warmup 200 \
    --lr-schedule cosine --time-limit-min 1.5 --out "$work/scene-judge" --json >"$work/judge.log" 2>&1 &
  judge=$!
fi
timeout $(python3 -c "print(int(60 * ($vae_min + $diff_min) + 90))") python3 -m workbench train --model tiny-sd \
  --batch-size 1024 --lr 5e-4 --warmup 500 --lr-schedule cosine --loss-weighting min-snr --ema-decay 0.9995 \
  --steps 100000 --vae-minutes "$vae_min" --time-limit-min "$diff_min" ${init:+--init-from "$init"} \
  --out "$work/tiny-sd" --json >"$work/train.log" 2>&1
echo "train exit $?"; tail -c 1500 "$work/train.log"
(cd "$work" && tar czf "$OUT/tiny-sd.tgz" tiny-sd)  # the weights first: an evaluation cut off by the limit loses them not
if [ -n "$judge" ]; then
  wait $judge; echo "judge exit $?"; tail -c 800 "$work/judge.log"
  rm -rf workbench/models/scene-judge && cp -r "$work/scene-judge" workbench/models/scene-judge
else
  cp -r workbench/models/scene-judge "$work/scene-judge"
fi
python3 -m workbench scenes --n 300 >"$work/prompts.txt"
cd "$work"
run_eval() {  # solver, steps, extra arguments: one sample run of the 300 prompts, judged
  (cd "$repo" && python3 -m workbench sample --model "$work/tiny-sd" --prompts-file "$work/prompts.txt" --n 300 \
    --steps "$2" --scheduler "$1" "${@:3}" --json) >"eval-$1-$2${3:+-g$4}.json" 2>"eval-$1-$2${3:+-g$4}.err" \
    || tail -n 3 "eval-$1-$2${3:+-g$4}.err"
}
for s in ddim dpmpp euler unipc; do run_eval $s 50 & run_eval $s 20 & done; wait
(cd "$repo" && python3 -m workbench sample --model "$work/tiny-sd" --prompts-file "$work/prompts.txt" --n 36 \
  --steps 50 --out "$work/samples.png" --json) >/dev/null 2>&1
for f in eval-*.json; do
  printf '%s ' "$f"; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('prompt_adherence'), d.get('attribute_agreement'), d.get('fd_scenes'), d.get('guidance_scale'))" "$f" 2>/dev/null || echo failed
done
tar czf "$OUT/scene-judge.tgz" scene-judge
tar czf "$OUT/extras.tgz" eval-*.json *.log prompts.txt samples.png 2>/dev/null
ls -la "$OUT"
