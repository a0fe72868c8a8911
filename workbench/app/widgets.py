"""Small Streamlit pieces several pages share (run picker); the maths stays in ``workbench``."""

from __future__ import annotations

import streamlit as st

from workbench.app.state import readable_errors, runs_root
from workbench.record.store import FeatureStore, list_runs


def pick_run(key: str, need_maps: bool = False):
    """A selectbox over the stored runs (the one opened on the Record page first); returns an open
    :class:`FeatureStore`, or ``None`` after showing a hint when there is none to show."""
    listed = list_runs(runs_root()) if runs_root().exists() else []
    runs = [r for r in listed if r.get("status") in ("complete", "incomplete")]
    skipped = [r for r in listed if r not in runs]
    if skipped:
        st.warning("Not shown (they cannot be analysed): " + "; ".join(
            f"{r['path']} ({r.get('status')}: {r.get('reason') or 'unreadable'})" for r in skipped))
    if not runs:
        st.info("No recorded run yet: record one on the Record page (the defaults take a few seconds).")
        st.page_link("pages/record.py", label="Go to Record", icon=":material/fiber_manual_record:")
        return None
    paths = [r["path"] for r in runs]
    current = st.session_state.get("run_dir")
    label = {r["path"]: f"{r['path']} · {r['model']} · {r['steps']} steps · {r['reduction']} · {r['status']}"
             for r in runs}
    path = st.selectbox("Run", paths, index=paths.index(current) if current in paths else 0, key=key,
                        format_func=label.get)
    st.session_state["run_dir"] = path
    with readable_errors("Opening the run"):
        store = FeatureStore.open(path)
    if store.steps_done < 2:
        st.warning("This run has fewer than two finished steps: nothing to compare between steps.")
        return None
    if need_maps and not store.has_maps:
        st.info("This run stored statistics only (reduction `stats`): record with `pool16` or `full` for this view.")
    return store
