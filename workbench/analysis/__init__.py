"""Analysers: pure computation over recorded runs (no Streamlit, no plotting), shared by the UI, CLI and tests."""
