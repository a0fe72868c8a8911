"""Entry point: ``streamlit run streamlit_app.py``. Navigation and shared resources; pages live in ``pages/``."""

import streamlit as st

st.set_page_config(page_title="FRDiff workbench", page_icon="⏱️", layout="wide")

pages = [
    st.Page("pages/models.py", title="Models", icon="🧪", default=True),
]
st.navigation(pages).run()
