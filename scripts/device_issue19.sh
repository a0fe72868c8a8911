#!/usr/bin/env bash
# Issue 19 on one H200 (device tool; $OUT comes back): bench gpu-speed in eager, compiled (regional, full) and
# CUDA-graph mode with the peers, one process per (model, image count) so a slow part leaves the others' JSON; each
# process is one interleaved run (ratios inside it). The inductor cache on disk carries compiled kernels from part to
# part.
# Usage: [COMPILE=regional|full|regional,full] [GRAPHS=blocks|step|both] [REPEATS=3] [CHANNELS_LAST=1] [KEEP_CACHE=1]
#   bash scripts/device_issue19.sh PART... where PART is MODEL:IMAGES:SECONDS[:OPTIONS] (e.g. dit-xl-2:1,8:230);
#   SECONDS "rest": what is left of DEADLINE seconds (default 560) from the script's start; OPTIONS: inductor
#   options for that part only, comma-separated (dit-xl-2:1:200:cpp_wrapper=true,freezing=true gives
#   --inductor-option cpp_wrapper=true --inductor-option freezing=true and the file name
#   gpu-speed-dit-xl-2-1-cpp_wrapper-freezing.json), so one call can compare sets of options part by part.
# With TESTS=1 it first runs the CUDA tests (`pytest tests -m gpu`: every test skipped without CUDA is marked gpu
# by tests/conftest.py; TESTS_LIMIT seconds, default 300); EXTRA:
# more gpu-speed options (e.g. --no-peers). Each part also profiles a full and a reuse
# call by kind of op (--profile).
# Wheels: .whl/ as in scripts/device_bench.sh (diffusers, DeepCache).
set -uo pipefail
OUT=${OUT:-/tmp/bench}
start=$(date +%s)  # DEADLINE counts from here: the set-up is part of the call's time
source scripts/device_lib.sh
device_setup
python3 -c "import torch; print('torch', torch.__version__)"
# Inductor's on-disk caches (compiled graphs, Triton kernels): a whole-call graph of SD-1.5 or DiT-XL/2 takes
# tens of seconds to compile each time on a fresh machine. KEEP_CACHE=1 writes them to $OUT/inductor-cache.tgz;
# copied to .work/inductor-cache.tgz (git-ignored) and carried, the next call starts from them.
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
mkdir -p "$TORCHINDUCTOR_CACHE_DIR"
[ -f .work/inductor-cache.tgz ] && tar -xzf .work/inductor-cache.tgz -C "$TORCHINDUCTOR_CACHE_DIR" \
  && echo "inductor cache: $(du -sh "$TORCHINDUCTOR_CACHE_DIR" | cut -f1) from .work/inductor-cache.tgz"
if [ -n "${TESTS:-}" ]; then
  timeout "${TESTS_LIMIT:-300}" python3 -m pytest -q -p no:cacheprovider tests \
    -m gpu -rs \
    >"$OUT/cuda-tests.log" 2>&1
  echo "cuda tests exit $? at $(( $(date +%s) - start )) s"; tail -n 15 "$OUT/cuda-tests.log"
fi
for part in "$@"; do
  IFS=: read -r model images limit options <<<"$part"
  opts=() tag=""
  for option in ${options//,/ }; do opts+=(--inductor-option "$option"); tag+="-${option%%=*}"; done
  [ "$limit" = rest ] && limit=$(( ${DEADLINE:-560} - ($(date +%s) - start) ))  # what is left of DEADLINE seconds
  if [ "$limit" -lt 10 ]; then echo "$part skipped: ${limit} s left"; continue; fi  # (timeout 0 would mean none)
  name="gpu-speed-$model-${images//,/-}${CHANNELS_LAST:+-cl}$tag"
  timeout "$limit" python3 -m workbench --debug bench gpu-speed --models "$model" --images "$images" \
    --compile "${COMPILE:-regional}" --cuda-graphs "${GRAPHS:-both}" --repeats "${REPEATS:-3}" --out "$OUT/$name" \
    ${CHANNELS_LAST:+--channels-last} --profile "${opts[@]}" ${EXTRA:-} --json >/dev/null 2>"$OUT/$name.log"
  echo "$name exit $? at $(( $(date +%s) - start )) s"
  if [ -f "$OUT/$name/gpu-speed.json" ]; then mv -f "$OUT/$name/gpu-speed.json" "$OUT/$name.json"  # finished
  elif [ -f "$OUT/$name/gpu-speed.partial.json" ]; then mv -f "$OUT/$name/gpu-speed.partial.json" "$OUT/$name.json"
  fi  # else nothing measured; a partial file beside a finished one is dropped
  rm -f "$OUT/$name/gpu-speed.partial.json"; rmdir "$OUT/$name" 2>/dev/null
  grep -v "^\s*$" "$OUT/$name.log" | grep -v Warning | tail -n 12
  if [ -n "${KEEP_CACHE:-}" ]; then  # after each part, so a call stopped in the next keeps what compiled so far
    tar -czf "$OUT/inductor-cache.tgz" -C "$TORCHINDUCTOR_CACHE_DIR" . && ls -la "$OUT/inductor-cache.tgz"
  fi
done
