"""Where the workbench keeps its data by default: a per-user folder outside the source tree, so that a checkout
holds code only (and a file watcher, an editable install or ``git status`` never walks recordings).

Override with ``FRDIFF_HOME`` (the whole data folder), ``FRDIFF_RUNS`` (recordings) or ``FRDIFF_POLICIES`` (the
policy library).
"""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """The app's per-user data folder, outside the source tree: ``$FRDIFF_HOME``, else
    ``$XDG_DATA_HOME/frdiff-workbench``, else ``~/.local/share/frdiff-workbench``."""
    if os.environ.get("FRDIFF_HOME"):
        return Path(os.environ["FRDIFF_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "frdiff-workbench"


def runs_root() -> Path:
    """Where the app's recordings go: ``$FRDIFF_RUNS``, else ``<data home>/runs``."""
    return Path(os.environ["FRDIFF_RUNS"]).expanduser() if os.environ.get("FRDIFF_RUNS") else data_home() / "runs"


def policy_library() -> Path:
    """The policy library folder: ``$FRDIFF_POLICIES``, else ``<data home>/policies``."""
    if os.environ.get("FRDIFF_POLICIES"):
        return Path(os.environ["FRDIFF_POLICIES"]).expanduser()
    return data_home() / "policies"
