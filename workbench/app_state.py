"""Resources shared by the Streamlit pages: loaded once per process with ``st.cache_resource``.

Pages import these instead of loading models themselves, so every session reuses one pipeline per model.
"""

from __future__ import annotations

import streamlit as st

from workbench.zoo import load_pipeline


@st.cache_resource(show_spinner="Loading model…")
def cached_pipeline(name_or_path: str):
    """One pipeline per model per server process (read-only use; runs that attach hooks take its lock)."""
    return load_pipeline(name_or_path)
