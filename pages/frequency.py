"""Frequency: radial spectra over the steps of a recorded run, and error spectra of variants against the full run."""

import numpy as np
import streamlit as st

from workbench.analysis.frequency import spectra_over_time
from workbench.app import runs as app_runs
from workbench.app.state import DEFAULT_MODEL, load_model, readable_errors
from workbench.app.widgets import pick_run
from workbench.figures import error_spectra_figure, spectra_over_time_figure

st.title("Frequency content over time")
st.write("Radial power spectra per step (0 = noisiest). Coarse structure (low frequencies) forms early, detail "
         "(high frequencies) late; a variant's error spectrum shows which frequencies it gets wrong.")

tab_time, tab_error = st.tabs(["Spectra over time", "Error spectra of variants"])

with tab_time:
    store = pick_run("freq_run")
    timesteps = store.timesteps if store is not None else []
    sources = ["predicted x0", "final image"] + (["block features"] if store is not None and store.has_maps else [])
    source = st.radio("Of", sources, horizontal=True, key="freq_source") if store is not None else None
    if store is None:
        pass
    elif source == "block features":
        block = st.selectbox("Block", store.blocks, key="freq_block")
        with readable_errors("Reading the block"):
            maps = store.features(block, cond=True)
        if maps.ndim != 5:
            st.info(f"{block}'s output is not a spatial map.")
        else:
            spectra = spectra_over_time(maps)
            st.plotly_chart(spectra_over_time_figure(spectra, timesteps, f"{block}: feature spectrum per step"))
    else:
        try:
            from workbench.analysis.report import frequency_report
        except ImportError:
            frequency_report = None
            st.info("x0 and final-image spectra need workbench.analysis.report, which this checkout lacks.")
        if frequency_report is not None:
            with readable_errors("The frequency analysis"):
                report = frequency_report(store)
            if source == "predicted x0":
                st.plotly_chart(spectra_over_time_figure(report["predicted_x0"]["spectra"], timesteps,
                                                         "Predicted x̂0: spectrum per step"))
            elif report.get("final") is None:
                st.info("The run is incomplete: no final image to analyse.")
            else:
                final = report["final"]
                fig = error_spectra_figure({f"final {final['space']} sample": np.asarray(final["spectrum"])})
                st.plotly_chart(fig.update_layout(title="Spectrum of the final sample", yaxis_title="power"))

with tab_error:
    result = st.session_state.get("comparison") or st.session_state.get("tour_compare_result")
    if result is None:
        st.write("No comparison yet in this session: run one on **Run & compare**, or the default three variants "
                 "(fewer steps, feature reuse, reuse + mixing) here on tiny-unet.")
        steps = st.slider("Steps", 4, 50, 20, key="freq_steps")
        if st.button("Run the default variants", type="primary", key="freq_run_variants"):
            pipe = load_model(DEFAULT_MODEL)
            bar = st.progress(0.0, text="running…")
            with readable_errors("The comparison"):
                result = app_runs.run_comparison(
                    pipe, app_runs.tour_variants(pipe, steps), [5, 5], [0, 1], steps,
                    progress=lambda info: bar.progress(info["done"] / info["total"], text=info["variant"]))
            bar.empty()
            st.session_state["comparison"] = result
    if result is not None:
        st.plotly_chart(error_spectra_figure(result["error_spectra"]))
        st.caption("Error power of (variant − reference) per radial frequency, averaged over images and channels.")
