"""Run & compare: the reference and any number of policies and reduced-step baselines from the same seeds."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from frdiff import Policy
from workbench.app import policy as app_policy
from workbench.app import runs as app_runs
from workbench.app.state import load_model, model_picker, policy_library, readable_errors
from workbench.compare import Variant
from workbench.conditions import Options
from workbench.figures import error_spectra_figure, image_grid
from workbench.models.schedulers import SCHEDULERS, is_flow_matching, scheduler_name

st.title("Run & compare")
st.write("Every variant samples the same classes (or prompts) from the same seeds as the full reference run, so the "
         "differences are the variant's alone.")

source = model_picker("compare_model")
if not source:
    st.info("Enter a local diffusers folder or a hub id (owner/name).")
    st.stop()
pipe = load_model(source)
class_model = app_runs.is_class_pipeline(pipe)
names = app_runs.class_names(pipe)

c1, c2, c3, c4, c5 = st.columns([2, 1, 1, 1, 1])
options = None
if class_model:
    classes = c1.multiselect("Classes (cycled over the images)", names, default=[names[-1]], key="compare_classes")
else:  # a text-to-image pipeline: prompts cycled over the images, its own size and scheduler by default
    text = c1.text_area("Prompts (one per line, cycled over the images)", "\n".join(app_runs.example_prompts(pipe, 2)),
                        key="compare_prompts")
    classes = [line.strip() for line in text.splitlines() if line.strip()]
    o1, o2, o3 = st.columns([2, 1, 1])
    negative = o1.text_input("Negative prompt", "", key="compare_negative")
    height = int(o2.number_input("Height (0: the pipeline's)", 0, 4096, 0, 8, key="compare_height"))
    width = int(o3.number_input("Width (0: the pipeline's)", 0, 4096, 0, 8, key="compare_width"))
    options = Options(negative or None, height or None, width or None)
images = int(c2.number_input("Images", 1, 64, 4, key="compare_images"))
first_seed = int(c3.number_input("First seed", 0, 2**31 - 1, 0, key="compare_seed"))
steps = int(c4.number_input("Steps", 1, 1000, 20, key="compare_steps"))
own = scheduler_name(pipe.scheduler)
choices = [own] if is_flow_matching(pipe.scheduler) else [s for s in SCHEDULERS if s != "ddpm"]
scheduler = c5.selectbox("Scheduler", choices, index=choices.index(own) if own in choices else 0,
                         key="compare_scheduler")
if scheduler not in SCHEDULERS:
    scheduler = None  # the pipeline's own (flow matching)

st.subheader("Variants")
v1, v2 = st.columns(2)
listed = app_policy.list_policies(policy_library()) if policy_library().exists() else []
library = [r for r in listed if not r["problems"]]
for r in listed:
    if r["problems"]:
        st.warning(f"Library file {r['name']}.json skipped: it does not load ({r['problems']})")
lib_names = [r["name"] for r in library]
preselected = [n for n in st.session_state.get("compare_selected", []) if n in lib_names]
chosen_lib = v1.multiselect("Library policies", lib_names, default=preselected, key="compare_library")
chosen_presets = v2.multiselect("Presets", app_runs.PRESET_LABELS, default=["uniform M=2"], key="compare_presets")
current = st.session_state.get("policy")
use_current = v1.checkbox("The builder's current policy", value=current is not None, disabled=current is None,
                          key="compare_current")
fewer = v2.text_input("Reduced-step baselines (steps, comma-separated)", str(max(1, steps // 2)),
                      key="compare_fewer")

# what the results below depend on: when it changes, they are marked as stale instead of passing for new ones
selection = {"model": source, "classes": list(classes), "images": images, "seed": first_seed, "steps": steps,
             "scheduler": scheduler, "library": list(chosen_lib), "presets": list(chosen_presets),
             "current": bool(use_current), "fewer": fewer}
if use_current and current is not None and current.steps != steps:
    remapped, _ = app_runs.fit_steps(current, steps)
    st.warning(f"The builder's policy is for {current.steps} steps; here it will be remapped to {steps} "
               f"(keyframe fraction kept: {remapped.denoiser_calls()} denoiser calls instead of "
               f"{current.denoiser_calls()} of {current.steps}). Set Steps to {current.steps} to run it as built.")
    if current.steps <= 1000:  # the Steps box's range
        st.button(f"Use {current.steps} steps", key="compare_use_policy_steps",
                  on_click=lambda n=current.steps: st.session_state.__setitem__("compare_steps", n))

if st.button("Run", type="primary", key="compare_run"):
    with readable_errors("Setting up the variants"):
        variants: list[Variant] = []
        notes = []
        if use_current and current is not None:
            p, note = app_runs.fit_steps(current, steps)
            variants.append(Variant("builder policy", p))
            notes += [f"builder policy: {note}"] if note else []
        for r in library:
            if r["name"] in chosen_lib:
                p, note = app_runs.fit_steps(Policy.load(r["path"]), steps)
                variants.append(Variant(r["name"], p))
                notes += [f"{r['name']}: {note}"] if note else []
        paths: list[str | None] = [None] * (1 if use_current and current is not None else 0) + \
            [r["path"] for r in library if r["name"] in chosen_lib]  # each variant's library file, if it has one
        variants += app_runs.preset_variants(pipe, chosen_presets, steps)
        variants += [app_runs.fewer_steps(n) for n in app_runs.parse_steps_list(fewer)]
        paths += [None] * (len(variants) - len(paths))
        variants = app_runs.unique_variants(variants)  # results are keyed by name
        if not variants:
            raise ValueError("choose at least one variant")
        if class_model:
            labels = [names.index(classes[i % len(classes)]) if classes else i % len(names) for i in range(images)]
        elif classes:
            labels = [classes[i % len(classes)] for i in range(images)]
        else:
            raise ValueError("give at least one prompt")
        seeds = list(range(first_seed, first_seed + images))
    for n in notes:
        st.info(n)
    st.caption("Interacting with the page (or Stop, top right) cancels the run between variants.")
    bar = st.progress(0.0, text="measuring FLOP shares and warming up…")
    with readable_errors("The comparison"):
        result = app_runs.run_comparison(
            pipe, variants, labels, seeds, steps, scheduler, options=options,
            progress=lambda info: bar.progress(info["done"] / info["total"], text=f"{info['variant']} done"))
    bar.empty()
    result["policies"] = {v.name: v.policy for v in variants if v.policy is not None}
    result["library_paths"] = {v.name: path for v, path in zip(variants, paths, strict=True) if path}
    result["setup"] = {"model": source, "steps": steps, "scheduler": scheduler, "labels": labels, "seeds": seeds,
                       "selection": selection, "options": options}
    st.session_state["comparison"] = result
    st.session_state.pop("compare_attribution", None)

result = st.session_state.get("comparison")
if result is None or "setup" not in result:
    st.stop()

st.subheader("Results")
if result["setup"].get("selection") != selection:
    st.warning("These results are for an earlier selection (the settings above have changed since): press Run for "
               "results of the current one.")
st.dataframe(pd.DataFrame(app_runs.metrics_rows(result)), hide_index=True)
st.caption(f"{result['n']} images, {result['setup']['steps']} steps; PSNR/SSIM against the reference images; "
           "FD-shapes needs ≥ 64 images.")
st.plotly_chart(app_runs.speedup_figure(result))
for v in result["variants"]:
    note = app_runs.speedup_note(v)
    if note:
        st.caption(note)
n_images = len(result["arrays"]["reference"])
k = st.slider("Image", 0, n_images - 1, 0, key="compare_image") if n_images > 1 else 0
grid = image_grid({name: a[k] for name, a in result["arrays"].items()}, reference="reference")
st.plotly_chart(grid.update_layout(height=560))
st.plotly_chart(error_spectra_figure(result["error_spectra"]))

stored = [n for n in result.get("library_paths", {})]
if stored and st.button("Store these metrics in the library policies", key="compare_store_metrics"):
    with readable_errors("Storing metrics"):
        for v in result["variants"]:
            if v["name"] in result["library_paths"]:
                app_policy.store_metrics(result["library_paths"][v["name"]],
                                         {**v, "n": result["n"], "model": result["setup"]["model"],
                                          "measured_at_steps": result["setup"]["steps"]})
    st.success(f"Stored metrics for {', '.join(stored)}.")

st.subheader("Attribution: which reused blocks cost the most quality")
st.write("Each group of reused blocks is computed at every step again, one group at a time, on the same seeds; the "
         "PSNR it wins back is what its reuse costs, the predicted speedup it gives up is what its reuse buys.")
policies = result.get("policies", {})
if not policies:
    st.caption("Add a policy variant to attribute its quality loss.")
    st.stop()
target = st.selectbox("Policy", list(policies), key="compare_attr_policy")
if st.button("Attribute", key="compare_attribute"):
    setup = result["setup"]
    bar = st.progress(0.0, text="running…")
    with readable_errors("The attribution"):
        attr = app_runs.run_comparison(
            pipe, app_runs.attribution_variants(policies[target], target), setup["labels"], setup["seeds"],
            setup["steps"], setup["scheduler"], options=setup.get("options"),
            progress=lambda info: bar.progress(info["done"] / info["total"], text=f"{info['variant']} done"))
    bar.empty()
    st.session_state["compare_attribution"] = {"policy": target, "rows": app_runs.attribution_rows(attr, target),
                                       "coverage": app_runs.attribution_coverage(attr, policies[target], target)}
attribution = st.session_state.get("compare_attribution")
if attribution:
    rows = attribution["rows"]
    if not rows:
        st.info(f"{attribution['policy']} reuses nothing: nothing to attribute.")
    else:
        st.write(attribution["coverage"])
        st.dataframe(pd.DataFrame(rows).rename(columns={
            "group": "group", "psnr": "PSNR (dB)", "psnr_gain_db": "PSNR won back (dB)", "ssim_gain": "SSIM won back",
            "predicted_speedup": "FLOP-predicted speedup", "speedup_given_up": "speedup given up"}).round(3),
            hide_index=True)
        fig = go.Figure(go.Bar(x=[r["group"] for r in rows], y=[r["psnr_gain_db"] for r in rows]))
        fig.update_layout(title=f"PSNR won back by recomputing each group ({attribution['policy']})",
                          yaxis_title="dB", font=dict(size=16))
        st.plotly_chart(fig)
