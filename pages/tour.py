"""Tour: temporal redundancy in three live steps on a shipped model — tiny-unet with a class, or tiny-sd with a
prompt (for teaching; large figures)."""

import streamlit as st

st.title("Temporal redundancy in diffusion models")  # first, so the page shows while torch and diffusers import

import numpy as np  # noqa: E402

from workbench.app import runs as app_runs  # noqa: E402
from workbench.app.state import DEFAULT_MODEL, load_model, readable_errors  # noqa: E402
from workbench.figures import blocks_steps_heatmap, error_spectra_figure, image_grid  # noqa: E402
from workbench.models.data import CLASSES  # noqa: E402

TOUR_MODELS = [DEFAULT_MODEL, "tiny-sd"]

STEPS = ["1 · Watch an image form", "2 · Adjacent steps barely change", "3 · Reuse instead of recompute"]

with st.expander("Settings (the defaults work)"):
    c0, c1, c2, c3, c4 = st.columns([1, 2, 1, 1, 1])
    model = c0.selectbox("Model", TOUR_MODELS, key="tour_model",
                         help="tiny-unet: class-conditional, pixel space; tiny-sd: Stable Diffusion's kind — a prompt, "
                              "a text encoder, a UNet on VAE latents")
    if model == "tiny-sd":
        label = c1.text_input("Prompt", "a red star at the top left on a blue background", key="tour_prompt",
                              help="shape, colour, position and background from the scenes it was trained on")
    else:
        cls = c1.selectbox("Class", list(CLASSES), index=CLASSES.index("star"), key="tour_class")
        label = CLASSES.index(cls)
    steps = c2.slider("Sampling steps", 4, 50, 30, key="tour_steps")
    images = c3.slider("Images in the comparison", 1, 8, 4, key="tour_images")
    seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="tour_seed")
step = st.radio("Step", STEPS, horizontal=True, key="tour_step", label_visibility="collapsed")
if st.session_state.get("tour_results_model") != model:  # results of the other model are not this one's
    for key in ("tour_x0", "tour_heatmap", "tour_compare_result"):
        st.session_state.pop(key, None)
    st.session_state["tour_results_model"] = model
pipe = load_model(model)

if step == STEPS[0]:
    st.markdown(
        f"A diffusion model starts from pure noise and removes a little of it at each of **{steps} steps**. At every "
        "step its network also predicts what the clean image will be (x̂0). Watch that prediction: the big "
        "shapes settle within the first few steps, and after that each step changes very little."
        + (" tiny-sd works like Stable Diffusion: the prompt is encoded once by a text encoder, the UNet denoises a "
           "small latent (4×16×16), and the VAE decodes each x̂0 to the 64×64 image shown." if model == "tiny-sd"
           else "")
    )
    if st.button("Sample and watch", type="primary", key="tour_watch"):
        live, caption = st.empty(), st.empty()
        bar = st.progress(0.0, text="sampling…")

        def show(s, total, frame, t):
            live.image(app_runs.enlarge(frame, 384), caption=f"x̂0 at step {s} (timestep {t})")
            bar.progress((s + 1) / total, text=f"step {s + 1} of {total}")

        with readable_errors("Sampling"):
            st.session_state["tour_x0"] = app_runs.sample_watching_x0(pipe, label, int(seed), steps, on_step=show)
        live.empty()
        bar.empty()
    watched = st.session_state.get("tour_x0")
    if watched:
        idx = app_runs.evenly(len(watched["x0"]), 6)
        cols = st.columns(len(idx))
        for col, i in zip(cols, idx, strict=True):
            col.image(app_runs.enlarge(watched["x0"][i], 192), caption=f"step {i} · t={watched['timesteps'][i]}")
        st.caption(f"{len(watched['x0'])} steps in {watched['latency_s']:.2f} s. Step 0 is the noisiest.")

elif step == STEPS[1]:
    st.markdown(
        "Inside the network, each **block** (a resnet or attention layer) produces a feature map at every step. "
        "We record how similar each block's output is to its output one step earlier. Cosine similarity close "
        "to 1 (bright) means the block is recomputing almost the same thing again: that work is redundant."
    )
    if st.button("Record and show", type="primary", key="tour_record"):
        bar = st.progress(0.0, text="recording…")
        with readable_errors("Recording"):
            st.session_state["tour_heatmap"] = app_runs.quick_heatmap(
                pipe, model, label, [int(seed), int(seed) + 1], steps,
                progress=lambda d, n: bar.progress(d / n, text=f"step {d} of {n}"))
        bar.empty()
    heat = st.session_state.get("tour_heatmap")
    if heat:
        fig = blocks_steps_heatmap(heat["cosine"], heat["blocks"], heat["timesteps"], "cosine")
        fig.update_layout(height=max(560, 32 * len(heat["blocks"])))
        st.plotly_chart(fig)
        later = heat["cosine"][:, 1:]
        median = float(np.nanmedian(later)) if later.size else float("nan")
        st.metric("Median adjacent-step cosine similarity (all blocks, steps ≥ 1)", f"{median:.3f}")

else:
    st.markdown(
        "So why recompute? Four ways to do about half the work, each compared with the full run **from the "
        "same noise**: *fewer steps* (skip half the steps), *feature reuse* (FRDiff: every 2nd step, blocks reuse "
        "their features from the step before and recompute only the cheap, timestep-dependent part), *reuse + "
        "score mixing* (early steps borrow the whole output; late steps use reuse) and *forecast* (every 2nd step "
        "each block's output is extrapolated from its last three computed values instead of held). The error "
        "spectrum shows which frequencies each one gets wrong; the sentences under it are what this run measured."
    )
    if st.button("Run the comparison", type="primary", key="tour_compare"):
        bar = st.progress(0.0, text="running…")
        with readable_errors("The comparison"):
            variants = app_runs.tour_variants(pipe, steps)
            seeds = list(range(int(seed), int(seed) + images))
            st.session_state["tour_compare_result"] = app_runs.run_comparison(
                pipe, variants, [label] * images, seeds, steps,
                progress=lambda info: bar.progress(info["done"] / info["total"], text=f"{info['variant']} done"))
        bar.empty()
    res = st.session_state.get("tour_compare_result")
    if res:
        arrays = res["arrays"]
        shown = {name: a[0] for name, a in arrays.items()}
        fig = image_grid(shown, reference="reference")
        fig.update_layout(height=640)
        st.plotly_chart(fig)
        cols = st.columns(len(res["variants"]))
        for col, v in zip(cols, res["variants"], strict=True):
            col.metric(v["name"], f"{v['psnr']:.1f} dB", f"{v['speedup']:.2f}× measured, {v['predicted_speedup']:.2f}× "
                       "from FLOPs", delta_color="off")
        st.plotly_chart(error_spectra_figure(res["error_spectra"]))
        for line in app_runs.tour_reading(res):
            st.markdown(line)

