"""Similarity: how much each block's output changes from one step to the next, for a recorded run."""

import numpy as np
import streamlit as st

from workbench.analysis.pca import pca_images
from workbench.analysis.similarity import similarity_matrix
from workbench.app import runs as app_runs
from workbench.app.state import readable_errors
from workbench.app.widgets import pick_run
from workbench.figures import (
    blocks_steps_heatmap,
    predictability_curves,
    predictability_heatmap,
    similarity_curves,
    steps_matrix,
)

st.title("Similarity across steps")
store = pick_run("sim_run")
if store is None:
    st.stop()
key = (str(store.directory), store.steps_done)


@st.cache_data(show_spinner="Reading statistics…", max_entries=8)
def _stats(path_and_steps):
    from workbench.record.store import FeatureStore

    s = FeatureStore.open(path_and_steps[0])
    return app_runs.all_stats(s)


@st.cache_data(show_spinner="Reading the block's maps…", max_entries=8)
def _maps(path_and_steps, block):
    from workbench.record.store import FeatureStore

    return FeatureStore.open(path_and_steps[0]).features(block, cond=True)


metric = st.radio("Metric", ["cosine", "rel_l1"], horizontal=True, key="sim_metric",
                  help="cosine: 1 = same direction · rel_l1: Σ|x_s − x_{s−1}| / Σ|x_{s−1}|, 0 = identical")
with readable_errors("Reading the statistics"):
    stats = _stats(key)
timesteps = store.timesteps
values = app_runs.adjacent_values(store, metric, stats)  # [blocks, steps]
st.plotly_chart(blocks_steps_heatmap(values, store.blocks, timesteps, metric))

block = st.selectbox("Block", store.blocks, key="sim_block")
c1, c2 = st.columns(2)
with c1:
    chosen = st.multiselect("Curves for", store.blocks, default=[block], key=f"sim_curves_{block}")  # follows Block
    curves = {b: stats[metric][:, store.blocks.index(b)] for b in chosen}  # step 0 has no previous step: NaN
    if curves:
        st.plotly_chart(similarity_curves(curves, timesteps, metric))
with c2:
    if store.has_maps:
        with readable_errors("The steps × steps matrix"):
            maps = _maps(key, block)
            matrix = similarity_matrix(maps, metric).mean(0)
        st.plotly_chart(steps_matrix(matrix, timesteps, block, metric))
    else:
        st.info("Steps × steps matrices and PCA need stored maps: record with reduction `pool16` or `full`.")

if store.has_maps:
    st.subheader(f"Feature PCA of {block}")
    st.caption("The block's channels projected on their three main components, one basis for all steps, so colour "
               "changes mean feature changes.")
    maps = _maps(key, block)
    if maps.ndim != 5:
        st.info(f"{block}'s output is not a spatial map; no PCA view.")
    else:
        sample = st.slider("Image", 0, maps.shape[1] - 1, 0, key="sim_sample") if maps.shape[1] > 1 else 0
        frames = pca_images(maps[:, sample])
        s = st.slider("Step", 0, len(frames) - 1, 0, key="sim_step")
        cols = st.columns(3)
        cols[0].image(app_runs.enlarge(frames[s], 256), caption=f"step {s} (t={timesteps[s]})")
        if s > 0:
            cols[1].image(app_runs.enlarge(frames[s - 1], 256), caption=f"step {s - 1} (t={timesteps[s - 1]})")
            diff = np.abs(frames[s] - frames[s - 1]).mean(-1)
            cols[2].image(app_runs.enlarge(np.clip(diff / max(float(diff.max()), 1e-6), 0, 1), 256),
                          caption="|difference| (normalised)")

if store.has_maps and store.steps_done > 1:
    st.subheader("Predictability")
    st.caption("How well each step's feature is predicted from the steps computed M, 2M, 3M steps before it: by "
               "**hold** (the value M steps back, what FRDiff reuses), **taylor1** (a line through two) or "
               "**taylor2** (a parabola through three). Relative L1 error of the prediction; 0 = exact.")

    @st.cache_data(show_spinner="Predicting every block's steps…", max_entries=4)
    def _predictability(path_and_steps):
        from workbench.record.store import FeatureStore

        return app_runs.predictability(FeatureStore.open(path_and_steps[0]))

    with readable_errors("The predictability view"):
        pred = _predictability(key)
    p1, p2 = st.columns(2)
    mode = p1.radio("Mode", pred["modes"], horizontal=True, index=len(pred["modes"]) - 1, key="sim_pred_mode")
    interval = p2.select_slider("Interval M", pred["intervals"], value=pred["intervals"][1], key="sim_pred_interval")
    a, b = pred["modes"].index(mode), pred["intervals"].index(interval)
    st.plotly_chart(predictability_heatmap(pred["error"][:, a, b], pred["blocks"], timesteps, mode, interval))
    st.plotly_chart(predictability_curves({m: pred["error"][pred["blocks"].index(block), i, b]
                                           for i, m in enumerate(pred["modes"])}, timesteps, block, interval))
