"""Policy builder: the blocks × steps keyframe grid, presets, threshold-from-run, score mixing, save/load."""

import datetime as dt

import plotly.graph_objects as go
import streamlit as st

import frdiff
from frdiff import Mixing
from frdiff.policy import MAX_SLOPE, MAX_STEPS, SKIP_SPACES
from workbench.app import policy as app_policy
from workbench.app.state import cached_savings, error_message, load_model, model_picker, policy_library, readable_errors
from workbench.app.widgets import pick_run
from workbench.models.schedulers import SCHEDULERS

st.title("Policy builder")
st.write("A policy says, per block and step, whether the block is **computed** (a keyframe, ✔) or **reuses** its "
         "features from its last keyframe (blank). Step 0 is always a keyframe. Score mixing blends the reused "
         "step's output with the last full step's.")

source = model_picker("builder_model", custom=True)
if not source:
    st.info("Enter a local diffusers folder or a hub id (owner/name).")
    st.stop()
pipe = load_model(source)
den = frdiff.denoiser_of(pipe)
try:
    savings = cached_savings(source)
except Exception as exc:  # noqa: BLE001 - the builder still works without predicted speedups
    savings = None
    st.warning(f"No predicted speedup for this model: {error_message(exc)}")


def set_base(policy) -> None:
    """Make ``policy`` the grid's starting point (a fresh editor; cell edits apply on top of it)."""
    st.session_state["builder_base"] = policy
    st.session_state["builder_for"] = fingerprint
    st.session_state["builder_rev"] = st.session_state.get("builder_rev", 0) + 1
    st.session_state["policy"] = policy


fingerprint = frdiff.model_fingerprint(den)
base = st.session_state.get("builder_base")
if base is not None and st.session_state.get("builder_for") is None:
    set_base(base)  # sent here from the library: adopt it for this model (problems show if it does not fit)
if base is None or st.session_state.get("builder_for") not in (None, fingerprint):  # first visit / model changed
    with readable_errors("Making the starting policy"):
        set_base(frdiff.make_preset("uniform", den, 20, interval=2))
    base = st.session_state["builder_base"]
rev = st.session_state["builder_rev"]

with st.expander("Start from a preset or a recorded run", expanded=False):
    c1, c2, c3, c4, c5 = st.columns(5)
    preset = c1.selectbox("Preset", [p for p in frdiff.PRESETS if p != "threshold"], index=1, key="builder_preset")
    steps = int(c2.number_input("Steps", 1, MAX_STEPS, base.steps, key="builder_steps"))
    interval = int(c3.number_input("Keyframe every M steps", 1, 50, 2, key="builder_interval"))
    scheduler = c4.selectbox("Scheduler", [s for s in SCHEDULERS if s != "ddpm"], key="builder_scheduler")
    mix = c5.checkbox("Score mixing", key="builder_mix")
    w1, w2 = st.columns(2)
    warmup = int(w1.number_input("Warm-up: first steps computed in full", 0, MAX_STEPS, 0, key="builder_warmup"))
    last = w2.checkbox("Last step a keyframe (grid counted back from it)", key="builder_last",
                       help="With warm-up 2 and M = 2: TaylorSeer's schedule")
    if st.button("Apply preset", type="primary", key="builder_apply_preset"):
        with readable_errors("The preset"):
            set_base(frdiff.make_preset(preset, den, steps, scheduler=scheduler, interval=interval, mix=mix,
                                        warmup=warmup, last=last))
        st.rerun()
    st.divider()
    store = pick_run("builder_run")
    if store is not None:
        t1, t2 = st.columns(2)
        delta = t1.number_input("Threshold δ (accumulated relative L1)", 0.0, 10.0, 0.3, 0.05, key="builder_delta")
        tmix = t2.checkbox("Score mixing", key="builder_threshold_mix")
        if st.button("Build from this run", key="builder_from_run"):
            with readable_errors("Building from the run"):
                set_base(app_policy.threshold_from_store(den, store, float(delta), mix=tmix))
            st.rerun()

st.subheader("Keyframes")
r1, r2, r3, r4 = st.columns([3, 2, 1, 1])
rows = r1.multiselect("Blocks", base.blocks, key=f"builder_rows_{rev}")
action = r2.selectbox("Set them to", ["computed at every step", "reuse (except step 0)", "keyframe every M steps"],
                      key=f"builder_row_action_{rev}")
every = int(r3.number_input("M", 1, 50, 2, key=f"builder_row_every_{rev}"))
s1, s2, s3 = st.columns([3, 1, 1])
cols = s1.multiselect("Steps", list(range(base.steps)), key=f"builder_cols_{rev}")

frame = app_policy.mask_frame(base)
config = {c: st.column_config.CheckboxColumn(c, width="small") for c in frame.columns}
edited = st.data_editor(frame, key=f"builder_grid_{rev}", column_config=config, use_container_width=True,
                        height=36 * (len(frame) + 1) + 4)  # every block in view; steps scroll sideways
st.caption(f"{len(frame)} blocks (in the order they run) × {base.steps} steps; scroll sideways for later steps.")
policy = app_policy.with_mask(base, app_policy.frame_mask(edited))

if r4.button("Apply to blocks", key="builder_rows_apply") and rows:
    idx = [base.blocks.index(b) for b in rows]
    mask = app_policy.set_blocks(policy.keyframes, idx, action == "computed at every step",
                                 every=every if action == "keyframe every M steps" else None)
    set_base(app_policy.with_mask(policy, mask))
    st.rerun()
if s2.button("Compute at these steps", key="builder_cols_on") and cols:
    set_base(app_policy.with_mask(policy, app_policy.set_steps(policy.keyframes, cols, True)))
    st.rerun()
if s3.button("Reuse at these steps", key="builder_cols_off") and cols:
    set_base(app_policy.with_mask(policy, app_policy.set_steps(policy.keyframes, cols, False)))
    st.rerun()

st.subheader("Reuse")
st.caption("What a block skips at a reuse step (the paper's cached part, or the whole block) and what it uses "
           "instead: **hold** keeps its last keyframe's value (FRDiff); **taylor1** / **taylor2** forecast it from "
           "its last 2 / 3 keyframes (a line / a parabola through them). A block with fewer keyframes behind it "
           "uses what they allow: hold with one.")
e1, e2 = st.columns([3, 2])
reuse_edit = e1.data_editor(
    app_policy.reuse_frame(base), key=f"builder_reuse_{rev}", disabled=["kind"],
    column_config={"skips": st.column_config.SelectboxColumn("skips", options=["feature", "block"], required=True),
                   "reuse": st.column_config.SelectboxColumn("reuse", options=list(frdiff.REUSE_MODES),
                                                             required=True)},
    height=min(36 * (len(base.blocks) + 1) + 4, 420))
all_modes = ["(per block)", *frdiff.REUSE_MODES]
set_all = e2.selectbox("Set every block to", all_modes, key=f"builder_reuse_all_{rev}")
skip_reuse = e2.selectbox("ε at skipped steps and in mixing", list(frdiff.REUSE_MODES),
                          index=list(frdiff.REUSE_MODES).index(base.skip_reuse), key=f"builder_skip_reuse_{rev}",
                          help="hold: the last full step's output; taylor1/2: forecast from the last full steps")
spaces = list(SKIP_SPACES)
skip_space = e2.selectbox("… held or forecast as", spaces, index=spaces.index(base.skip_space),
                          key=f"builder_skip_space_{rev}",
                          help="output: the denoiser's output; data: the data prediction x̂₀ it implies, turned back "
                               "into an output at the current step (better under DPM-Solver++ and UniPC)")
axis = e2.selectbox("Forecast axis", ["step", "timestep"], index=["step", "timestep"].index(base.forecast_axis),
                    key=f"builder_axis_{rev}")
dtypes = ["model's", "float32", "float16", "bfloat16"]
cache_dtype = e2.selectbox("Cache dtype", dtypes, index=dtypes.index(base.cache_dtype or "model's"),
                           key=f"builder_cache_dtype_{rev}")
if set_all != "(per block)":
    reuse_edit = reuse_edit.assign(reuse=set_all)
policy = app_policy.with_reuse(policy, reuse_edit, skip_reuse, axis, None if cache_dtype == "model's" else cache_dtype,
                               skip_space)

st.subheader("Score mixing")
m = base.mixing
m1, m2, m3, m4, m5 = st.columns(5)
enabled = m1.checkbox("Enabled", m.enabled, key=f"builder_mix_on_{rev}")
schedule = m2.selectbox("Schedule", ["linear", "sigmoid", "constant"],
                        index=["linear", "sigmoid", "constant"].index(m.schedule), key=f"builder_mix_schedule_{rev}")
center = m3.slider("Centre", 0.0, 1.0, float(m.center), 0.01, key=f"builder_mix_center_{rev}")
slope = m4.number_input("Slope", 0.0, MAX_SLOPE, float(m.slope), 1.0, key=f"builder_mix_slope_{rev}")
value = m5.slider("Constant λ", 0.0, 1.0, float(m.value), 0.05, key=f"builder_mix_value_{rev}")
policy = app_policy.with_mixing(policy, Mixing(enabled=enabled, schedule=schedule, center=center, slope=slope,
                                               value=value))
lam = policy.step_lambdas()
fig = go.Figure(go.Scatter(x=list(range(policy.steps)), y=lam, mode="lines+markers", name="λ"))
fig.update_layout(title="λ per step (1 at full steps; 0 = no denoiser call)", xaxis_title="step (0 = noisiest)",
                  yaxis_title="λ", yaxis_range=[-0.05, 1.05], height=300, font=dict(size=14))
st.plotly_chart(fig)
st.session_state["policy"] = policy

st.subheader("Check")
problems = app_policy.problems_for(policy, den)
summary = app_policy.summary(policy, savings)
k1, k2, k3, k4, k5 = st.columns(5)
k1.metric("Predicted speedup", f"{summary['predicted_speedup']:.2f}×" if "predicted_speedup" in summary else "–")
k2.metric("Cache memory (1 image)", f"{summary['cache_bytes'] / 2**20:.2f} MiB" if "cache_bytes" in summary else "–")
k3.metric("Denoiser calls", f"{summary['denoiser_calls']} / {policy.steps}")
k4.metric("Keyframe share", f"{summary['keyframe_share']:.0%}")
k5.metric("Steps full / FR / skipped", f"{summary['full_steps']} / {summary['fr_steps']} / {summary['skipped_steps']}")
st.caption(f"Reuse: {summary['reuse']}. The prediction counts FLOPs (a reuse step saves what it skips, a skipped "
           "step everything) and the bytes the caches hold at most; measured times and bytes are on Run & compare.")
if problems:
    for p in problems:
        st.warning(p)
else:
    st.success("Valid for this model.")

st.subheader("Save and share")
v1, v2, v3 = st.columns([2, 1, 1])
# a new starting policy gets a name of its own
name = v1.text_input("Name", app_policy.default_name(base), key=f"builder_name_{rev}")
overwrite = v2.checkbox("Overwrite", key=f"builder_overwrite_{rev}")  # a new starting policy: unticked again
if v3.button("Save to library", type="primary", key="builder_save", disabled=bool(problems)):
    with readable_errors("Saving"):  # a copy: a refused save leaves the policy being edited as it was
        saved = policy.replaced(provenance={**policy.provenance, "model_source": source,
                                            "saved": dt.datetime.now().isoformat(timespec="seconds")})
        path = app_policy.save_policy(saved, policy_library(), name, overwrite=overwrite)
    st.success(f"Saved {path}")
st.download_button("Download JSON", app_policy.policy_json(policy), file_name=f"{name or 'policy'}.json",
                   mime="application/json", key="builder_download", disabled=bool(problems))
upload = st.file_uploader("Upload a policy JSON", type=["json"], key="builder_upload")
if upload is not None and st.session_state.get("builder_uploaded") != upload.file_id:
    st.session_state["builder_uploaded"] = upload.file_id  # tried once: a bad file is not re-read every rerun
    with readable_errors(f"Reading {upload.name}"):
        loaded = app_policy.load_upload(upload.getvalue())
        set_base(loaded)
    st.session_state["builder_upload_note"] = (upload.name, loaded.load_notes)
    st.rerun()
note = st.session_state.pop("builder_upload_note", None)
if note is not None:
    st.success(f"Loaded {note[0]}: {base.steps} steps, {len(base.blocks)} blocks.")
    for line in note[1]:
        st.info(line)
