# Shared by the device scripts (sourced, not run): set-up on the GPU machine and the one-line summaries.
# The GPU machine has torch but not diffusers/zarr: their wheels travel in .whl/ (git-ignored; see device_train.sh).
device_setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
}

# In a work folder of eval-*.json (workbench sample --json) and train-*.json (workbench train --json): one line each.
summarise() {
  local f
  for f in eval-*.json; do
    printf '%s ' "$f"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('class_accuracy'), d.get('fd_shapes'))" "$f" 2>/dev/null || echo failed
  done
  for f in train-*.json; do
    printf '%s ' "$f"
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['steps_done'], d['schedule_steps'], round(d['final_loss'], 5), round(d['train_minutes'], 2), d.get('diverged', False))" "$f" 2>/dev/null || { echo failed; tail -n 3 "${f%.json}.log"; }
  done
}
