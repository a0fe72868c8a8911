"""Record: sample with hooks on every chosen block and store features and statistics; browse stored runs."""

import datetime as dt

import pandas as pd
import streamlit as st

import frdiff
from workbench.app import runs as app_runs
from workbench.app.state import load_model, model_picker, readable_errors, runs_root
from workbench.models.schedulers import SCHEDULERS
from workbench.record.plan import REDUCTIONS
from workbench.record.store import FeatureStore, delete_run, list_runs

st.title("Record a run")
st.write("Every chosen block's output is observed at every step while the pipeline samples. The store keeps "
         "adjacent-step statistics always, and feature maps unless the reduction is `stats`.")

source = model_picker("record_model")
if not source:
    st.info("Enter a local diffusers folder or a hub id (owner/name).")
    st.stop()
pipe = load_model(source)
class_model = app_runs.is_class_pipeline(pipe)

c1, c2, c3, c4, c5 = st.columns(5)
if class_model:
    cls = c1.selectbox("Class", app_runs.class_names(pipe), index=0, key="record_class")
    prompt = None
else:
    prompt = c1.text_input("Prompt", app_runs.example_prompts(pipe)[0], key="record_prompt")
    cls = None
sched_names = [s for s in SCHEDULERS if s != "ddpm"]
scheduler = c2.selectbox("Scheduler", sched_names, key="record_scheduler")
steps = int(c3.number_input("Steps", 2, 1000, 20, key="record_steps"))
seed = int(c4.number_input("First seed", 0, 2**31 - 1, 0, key="record_seed"))
batch = int(c5.number_input("Images", 1, 64, 2, key="record_batch"))
c6, c7 = st.columns([3, 1])
all_blocks = [b for b, _ in frdiff.find_blocks(frdiff.denoiser_of(pipe))]
blocks = c6.multiselect("Blocks (empty = all)", all_blocks, key="record_blocks")
reduction = c7.selectbox("Reduction", list(REDUCTIONS), index=list(REDUCTIONS).index("pool16"), key="record_reduce",
                         help="full: every map at full size, float32 · pool16: maps pooled to ≤ 16×16, float16 · "
                              "stats: no maps, only statistics, denoiser outputs and latents")
seeds = list(range(seed, seed + batch))
labels = [app_runs.class_names(pipe).index(cls)] * batch if class_model else None
prompts = [prompt] * batch if not class_model else None

with readable_errors("Sizing the store"):
    plan = st.cache_data(app_runs.plan_store, show_spinner="Sizing the store…",
                         hash_funcs={type(pipe): lambda p: id(p)})(
        pipe, seeds, steps, scheduler, reduction, blocks or None, labels, prompts)
st.info(f"Predicted store: **{plan['estimate_bytes'] / 2**20:.1f} MiB** on disk (before compression) for "
        f"{plan['blocks']} blocks × {steps} steps × {batch} images; the recorder holds "
        f"{plan['device_bytes'] / 2**20:.1f} MiB of device memory for the statistics.")

if st.button("Record", type="primary", key="record_run"):
    with readable_errors("Making the run folder"):  # a new folder of its own (atomic, unique)
        out = app_runs.run_folder(runs_root(), source, cls or prompt or "run",
                                  dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    st.caption("Interacting with the page (or pressing Stop at the top right) cancels the recording; the store "
               "then reads up to its last finished step.")
    bar = st.progress(0.0, text="planning…")
    with readable_errors("Recording"):
        app_runs.record(pipe, source, out, seeds, steps, scheduler, reduction, blocks or None, labels=labels,
                        prompts=prompts, progress=lambda d, n: bar.progress(d / n, text=f"step {d} of {n}"))
    bar.empty()
    st.session_state["run_dir"] = str(out)
    st.success(f"Recorded {out}. Open it on the Similarity or Frequency page.")

st.header("Stored runs")
runs = list_runs(runs_root()) if runs_root().exists() else []
if not runs:
    st.caption(f"No runs under {runs_root()} yet.")
    st.stop()
table = pd.DataFrame(runs)
st.dataframe(table, hide_index=True)
paths = [r["path"] for r in runs]
current = st.session_state.get("run_dir")
picked = st.selectbox("Run", paths, index=paths.index(current) if current in paths else 0, key="record_pick")
b1, b2, b3 = st.columns([1, 1, 3])
status = next(r for r in runs if r["path"] == picked)
if b1.button("Open", key="record_open"):
    if status["status"] in ("complete", "incomplete"):  # what the Similarity and Frequency pages can read
        st.session_state["run_dir"] = picked
        st.success(f"Opened {picked}: the Similarity and Frequency pages now show it.")
    else:
        st.error(f"{picked} is {status['status']} ({status['reason'] or 'unreadable'}): the Similarity and "
                 f"Frequency pages cannot show it; record it again or delete it")
with b2.popover("Delete…"):
    st.write(f"Delete **{picked}** and all its arrays?")
    if st.button("Yes, delete", type="primary", key="record_delete"):
        with readable_errors("Deleting"):
            delete_run(picked)
        if st.session_state.get("run_dir") == picked:
            st.session_state.pop("run_dir")
        st.rerun()
with readable_errors("Reading the run"):
    store = FeatureStore.open(picked, allow_damaged=True)  # a damaged run is shown with what it lacks
    m = store.manifest
    b3.caption(f"{m['model']['id']} · {m['scheduler']['name']} · {store.steps_done}/{m['steps']} steps · "
               f"{len(store.blocks)} blocks · {m['reduction']['name']} · {store.disk_bytes() / 2**20:.1f} MiB"
               + ("" if store.complete else f" · incomplete ({m.get('error', 'interrupted')})"))
    if store.damage:
        st.warning("This run is damaged, and the analysis pages will not read it: " + "; ".join(store.damage))
