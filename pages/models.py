"""Models: the shipped diffusion models, and a sample from one of them judged by the shape classifier (tiny-sd: by
the scene judge)."""

import streamlit as st

import frdiff
from workbench.app.state import load_model, readable_errors
from workbench.models.data import CLASSES, to_uint8
from workbench.models.zoo import list_models
from workbench.sampling import judge, sample

st.title("Shipped models")
st.write(
    "Three small diffusion models trained by this project on procedural shapes — two class-conditional, one a stock "
    "Stable Diffusion pipeline prompted with scene captions (tiny-sd) — and the judges of their samples. Everything "
    "else in the workbench runs on them by default."
)
rows = st.cache_data(list_models)()
st.dataframe(
    [{"model": r["name"], "architecture": r["architecture"],
      "parameters (M)": round(r["parameters"] / 1e6, 2) if r["parameters"] else "–",
      "weights": "present" if r["weights"] else "missing", "description": r["description"]} for r in rows],
    hide_index=True,
)

st.subheader("Sample")
c1, c2, c3, c4 = st.columns(4)
model = c1.selectbox("Model", [r["name"] for r in rows], key="models_model")
prompted = next(r["architecture"] for r in rows if r["name"] == model) == "sd"
if prompted:
    condition = c2.text_input("Prompt", "a red star at the top left on a blue background", key="models_prompt")
else:
    condition = CLASSES.index(c2.selectbox("Class", list(CLASSES), key="models_class"))
steps = c3.slider("DDIM steps", 5, 100, 50, key="models_steps")
seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="models_seed")
if st.button("Sample 8 images", type="primary", key="models_run"):
    pipe = load_model(model)
    with st.spinner("Sampling…"), readable_errors("Sampling"), frdiff.exclusive(pipe):  # a shared pipeline: take turns
        result = sample(pipe, [condition] * 8, list(range(int(seed), int(seed) + 8)), steps=steps)
    metrics = judge(result)
    if metrics["class_accuracy"] is None:
        st.info(f"Class accuracy: {metrics['class_metrics']}")
    else:
        st.metric("Prompt adherence (scene judge)" if prompted else "Class accuracy",
                  f"{metrics['class_accuracy']:.0%}")
    st.caption(f"{result.latency_s:.2f} s for 8 images with classifier-free guidance on {pipe.device}.")
    st.image(list(to_uint8(result.images).numpy()), width=128)
