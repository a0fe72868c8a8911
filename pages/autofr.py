"""Auto-FR: learn which steps (or blocks × steps) recompute by gradient descent through the sampler."""

import streamlit as st

from workbench.app import autofr as app_autofr
from workbench.app import policy as app_policy
from workbench.app import runs as app_runs
from workbench.app.state import cached_savings, load_model, readable_errors
from workbench.models.zoo import EMBEDDED

st.title("Auto-FR")
st.write("The model stays frozen; one gate per step (or per block and step) decides compute or reuse. Training "
         "minimises the error of the final image against the full run, steered to a compute target (1 = full "
         "cost). The best mask meeting the target is kept, also when you stop.")

c1, c2, c3, c4 = st.columns(4)
model = c1.selectbox("Model", list(EMBEDDED), key="autofr_model")
steps = int(c2.number_input("Steps", 2, 200, 20, key="autofr_steps",
                            help="the step count the policy is for: Run & compare runs it at this count too"))
target = c3.slider("Compute target", 0.2, 1.0, 0.6, 0.05, key="autofr_target")
iterations = int(c4.number_input("Iterations", 1, 500, 10, key="autofr_iterations"))
c5, c6, c7, c8, c9 = st.columns(5)
gates = c5.selectbox("Gates", ["step", "block"], key="autofr_gates", help="step: the paper's, shared by all blocks")
granularity = c6.selectbox("A reusing block skips", ["feature", "block"], key="autofr_granularity",
                           help="feature: the paper's cached part; block: the whole block")
reuse = c7.selectbox("Reuse", ["hold", "taylor1", "taylor2"], key="autofr_reuse",
                     help="hold: the last keyframe's value (FRDiff); taylor1/2: forecast from the last 2/3 keyframes")
train_images = int(c8.number_input("Training images", 1, 64, 4, key="autofr_train"))
batch = int(c9.number_input("Images per iteration", 1, 16, 2, key="autofr_batch"))
pipe = load_model(model)
prompts = None
if not app_runs.is_class_pipeline(pipe):  # text-to-image: the training images' prompts, cycled over the seeds
    text = st.text_area("Prompts (one per line, cycled over the training images)",
                        "\n".join(app_runs.example_prompts(pipe, 4)), key="autofr_prompts")
    prompts = [line.strip() for line in text.splitlines() if line.strip()]

if st.button("Learn", type="primary", key="autofr_run"):
    best: dict = {}
    st.session_state["autofr_best"] = best  # filled while it runs: a Stop keeps the best mask so far
    st.session_state.pop("autofr_result", None)
    st.caption("Interacting with the page (or Stop, top right) stops training; the best mask so far is kept.")
    bar = st.progress(0.0, text="references and FLOP shares…")
    chart = st.empty()
    history: list[dict] = []

    def show(info: dict) -> None:
        history.append(info)
        bar.progress((info["iteration"] + 1) / info["iterations"],
                     text=f"iteration {info['iteration'] + 1} of {info['iterations']}")
        chart.plotly_chart(app_autofr.progress_figure(history, target))

    with readable_errors("Auto-FR"):
        result = app_autofr.learn(pipe, steps, target, gates, granularity, reuse, iterations, train_images, batch,
                                  savings=cached_savings(model), progress=show, best=best, model_name=model,
                                  prompts=prompts)
    bar.empty()
    st.session_state["autofr_result"] = result.policy

policy = st.session_state.get("autofr_result")
best = st.session_state.get("autofr_best")
if policy is None and best:
    with readable_errors("Rebuilding the best mask"):
        policy = app_autofr.policy_from_mask(pipe, best["mask"], best["steps"], best["granularity"], best["reuse"],
                                             {"stopped": True, "selected_iteration": best["iteration"]})
    st.info(f"Stopped: the best mask so far is from iteration {best['iteration']} "
            f"(compute {best['compute_fraction']:.3f}).")
if policy is not None:
    s = app_policy.summary(policy, cached_savings(model))
    compute = 1 / s["predicted_speedup"]
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("Predicted speedup", f"{s['predicted_speedup']:.2f}×")
    k2.metric("Compute (target)", f"{compute:.3f} ({target:.2f})",
              "target met" if compute <= target + 1e-6 else "above target", delta_color="off")
    k3.metric("Keyframe share", f"{s['keyframe_share']:.0%}")
    k4.metric("Denoiser calls", f"{s['denoiser_calls']} / {policy.steps}")
    st.dataframe(app_policy.mask_frame(policy), height=36 * (len(policy.blocks) + 1) + 4)  # every block shows
    if st.button("Send to the builder", key="autofr_send"):
        st.session_state["builder_base"] = policy
        st.session_state["builder_for"] = None
        st.session_state["policy"] = policy
        st.session_state["builder_rev"] = st.session_state.get("builder_rev", 0) + 1
        st.switch_page("pages/policy_builder.py")
