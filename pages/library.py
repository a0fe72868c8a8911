"""Policy library: saved policies with their provenance and measured metrics; compare, download, delete."""

from pathlib import Path

import pandas as pd
import streamlit as st

from frdiff import Policy
from workbench.app import policy as app_policy
from workbench.app.state import policy_library, readable_errors

st.title("Policy library")


def delete(name: str) -> None:
    """The delete button's callback (it runs before the widgets, so the selection can drop the deleted name)."""
    try:
        app_policy.delete_policy(policy_library(), name)
    except (OSError, ValueError) as exc:
        st.session_state["library_message"] = ("error", f"Deleting {name} failed: {exc}")
        return
    st.session_state["library_selected"] = [n for n in st.session_state.get("library_selected", []) if n != name]
    st.session_state["library_message"] = ("success", f"Deleted {name}.")


message = st.session_state.pop("library_message", None)
if message is not None:
    (st.success if message[0] == "success" else st.error)(message[1])
root = policy_library()
st.caption(f"Folder: {root} · policies saved from the builder (or any `frdiff-policy` JSON dropped there).")
rows = app_policy.list_policies(root) if root.exists() else []
if not rows:
    st.info("The library is empty: save a policy from the Policy builder.")
    st.page_link("pages/policy_builder.py", label="Go to the Policy builder", icon=":material/grid_on:")
    st.stop()

good_rows = [r for r in rows if not r["problems"]]
if good_rows:
    st.dataframe(pd.DataFrame(good_rows).drop(columns=["path", "problems"]), hide_index=True)
for r in rows:
    if r["problems"]:
        st.warning(f"Skipped {Path(r['path']).name}: it does not load ({r['problems']})")
    elif r.get("notes"):
        st.info(f"{r['name']}: {r['notes']}")

good = [r["name"] for r in rows if not r["problems"]]
selected = st.multiselect("Policies", good, key="library_selected")
c1, c2, c3 = st.columns(3)
if c1.button("Compare on Run & compare", type="primary", key="library_compare", disabled=not selected):
    st.session_state["compare_selected"] = list(selected)
    st.switch_page("pages/compare.py")
if c2.button("Open in the builder", key="library_open", disabled=len(selected) != 1):
    with readable_errors("Opening"):
        policy = Policy.load(root / f"{selected[0]}.json")
    st.session_state["builder_base"] = policy
    st.session_state["builder_for"] = None  # the builder adopts it for whichever model it shows
    st.session_state["policy"] = policy
    st.session_state["builder_rev"] = st.session_state.get("builder_rev", 0) + 1
    st.switch_page("pages/policy_builder.py")

for name in selected:
    path = root / f"{name}.json"
    with st.expander(name, expanded=len(selected) == 1):
        with readable_errors(f"Reading {name}"):
            policy = Policy.load(path)
        st.json(policy.provenance, expanded=False)
        d1, d2 = st.columns(2)
        d1.download_button("Download JSON", path.read_text(), file_name=path.name, mime="application/json",
                           key=f"library_download_{name}")
        with d2.popover("Delete…"):
            st.write(f"Delete **{name}** from the library?")
            st.button("Yes, delete", type="primary", key=f"library_delete_{name}", on_click=delete, args=(name,))
