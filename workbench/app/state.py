"""Resources shared by the Streamlit pages: models loaded once per process, folders, and readable errors.

Pages import these instead of loading models themselves, so every session reuses one pipeline per model. A shared
pipeline is only ever run inside ``frdiff.apply`` or ``frdiff.exclusive`` (the helpers in ``workbench.app.runs`` do
that), so two sessions take turns and neither sees the other's hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from workbench.models.zoo import load_pipeline
from workbench.paths import data_home, policy_library, runs_root

__all__ = ["data_home", "policy_library", "runs_root"]  # and the helpers below

DEFAULT_MODEL = "tiny-unet"


@st.cache_resource(show_spinner="Loading model…")
def cached_pipeline(name_or_path: str):
    """One pipeline per model per server process (runs take its lock through frdiff.apply / frdiff.exclusive)."""
    return load_pipeline(name_or_path)


@st.cache_resource(show_spinner="Measuring FLOP shares…")
def cached_savings(name_or_path: str) -> dict:
    """FLOP share each block's reuse saves, per granularity (for predicted speedups), measured once per model."""
    from workbench.app.runs import savings_of

    return savings_of(cached_pipeline(name_or_path))


@contextmanager
def readable_errors(what: str = "") -> Iterator[None]:
    """Show any exception raised inside as one ``st.error`` (no traceback) and stop the page there.

    Streamlit's own control flow (reruns, stops, a Stop click interrupting a run) is a ``BaseException`` and passes.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the page shows every failure as a message
        st.error(error_message(exc, what))
        st.stop()


def error_message(exc: BaseException, what: str = "") -> str:
    """One readable message for an exception: known workbench errors as they are, others with their type."""
    from frdiff import PolicyError
    from workbench.models.zoo import ModelLoadError
    from workbench.record.plan import BudgetError
    from workbench.record.store import StoreError

    prefix = f"{what} failed: " if what else ""
    if isinstance(exc, PolicyError):
        return prefix + "the policy cannot be used:\n" + "\n".join(f"- {p}" for p in exc.problems)
    if isinstance(exc, (ModelLoadError, BudgetError, StoreError, ValueError, FileNotFoundError)):
        return prefix + str(exc)
    return f"{prefix}{type(exc).__name__}: {exc}"


def load_model(source: str):
    """The cached pipeline for ``source``, or an ``st.error`` naming what was tried (the page stops)."""
    with readable_errors("Loading the model"):
        return cached_pipeline(source.strip())


def model_picker(key: str, label: str = "Model", custom: bool = True) -> str:
    """Shipped models plus (``custom``) a local diffusers folder or hub id; returns the model source string."""
    from workbench.models.zoo import EMBEDDED

    options = list(EMBEDDED) + (["local folder or hub id…"] if custom else [])
    choice = st.selectbox(label, options, key=f"{key}_choice")
    if choice in EMBEDDED:
        return choice
    return st.text_input("Folder or hub id", key=f"{key}_source", placeholder="/path/to/sd-model or owner/name")
