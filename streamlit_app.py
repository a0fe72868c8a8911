"""Entry point: ``streamlit run streamlit_app.py``. Navigation and shared session defaults; pages live in ``pages/``.

Every page works on the shipped ``tiny-unet`` with nothing to configure. Heavy objects (pipelines, FLOP shares) are
cached per process in ``workbench.app.state``; state shared between pages lives in ``st.session_state``:
``policy`` (the builder's current policy), ``run_dir`` (the recording opened in the run browser) and ``comparison``
(the last Run & compare result).
"""

import os

import streamlit as st

# One torch thread per app process unless FRDIFF_THREADS says otherwise: the shipped models are tiny, and on a small
# shared CPU two threads of one run wait on each other (docs/app.md: the Tour's 30-step run took 1.3-1.7 s on one
# thread and 12-30 s on two under load). Set before torch is imported by any page.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("FRDIFF_THREADS", "1"))

st.set_page_config(page_title="FRDiff workbench", page_icon=":material/timer:", layout="wide")

pages = {
    "Learn": [
        st.Page("pages/tour.py", title="Tour", icon=":material/school:", default=True),
        st.Page("pages/models.py", title="Models", icon=":material/science:"),
    ],
    "See": [
        st.Page("pages/record.py", title="Record", icon=":material/fiber_manual_record:"),
        st.Page("pages/similarity.py", title="Similarity", icon=":material/repeat:"),
        st.Page("pages/frequency.py", title="Frequency", icon=":material/graphic_eq:"),
    ],
    "Use": [
        st.Page("pages/policy_builder.py", title="Policy builder", icon=":material/grid_on:"),
        st.Page("pages/compare.py", title="Run & compare", icon=":material/compare:"),
        st.Page("pages/autofr.py", title="Auto-FR", icon=":material/model_training:"),
        st.Page("pages/library.py", title="Policy library", icon=":material/library_books:"),
    ],
}
st.navigation(pages).run()
