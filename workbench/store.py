"""On-disk store of one recorded run: ``manifest.json`` + a zarr group of chunked arrays.

Why zarr: arrays are written one step (one chunk) at a time while sampling runs, any block can be read without
touching the others, and the format is an open, widely read standard (numpy, xarray, dask). The manifest is plain
JSON, replaced atomically (write to a temporary file, then ``os.replace``), so a reader never sees half of one.

Layout of ``DIR``::

    manifest.json                 model, scheduler, steps, timesteps, seeds, classes, reduction, blocks, versions,
                                  complete, steps_done
    arrays.zarr/features/<i>      [steps, batch, ...] block i's (reduced) output, both CFG halves along batch
    arrays.zarr/stats/cosine      [steps, blocks, batch] cosine similarity of x_s and x_{s−1} (step 0: NaN)
    arrays.zarr/stats/rel_l1      [steps, blocks, batch] Σ|x_s − x_{s−1}| / Σ|x_{s−1}| (step 0: NaN)
    arrays.zarr/denoiser_output   [steps, batch, C, H, W]
    arrays.zarr/latents           [steps, images, C, H, W] the denoiser's sample input (one CFG half)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import zarr

MANIFEST = "manifest.json"
ARRAYS = "arrays.zarr"


class StoreError(RuntimeError):
    """A store is missing, unreadable or does not hold what was asked for."""


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically (readers see the old or the new file, never a mix)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2, default=str)
        os.replace(tmp, directory / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FeatureStore:
    """Read access to a recorded run. ``FeatureStore.open(DIR)``; arrays load lazily, block by block."""

    def __init__(self, directory: Path, manifest: dict, root: zarr.Group):
        self.directory = directory
        self.manifest = manifest
        self._root = root
        self._index = {b["name"]: i for i, b in enumerate(manifest["blocks"])}

    @classmethod
    def open(cls, directory: str | Path) -> FeatureStore:
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.exists():
            raise StoreError(f"{directory} is not a recorded run: {MANIFEST} is missing")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{path} is not valid JSON: {exc}") from None
        if manifest.get("format") != "frdiff-workbench-run":
            raise StoreError(f"{path} is not a workbench run manifest")
        return cls(directory, manifest, zarr.open_group(str(directory / ARRAYS), mode="r"))

    # What the run holds.
    @property
    def blocks(self) -> list[str]:
        return [b["name"] for b in self.manifest["blocks"]]

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def steps_done(self) -> int:
        """Steps whose arrays are fully written (all of them when complete)."""
        return int(self.manifest["steps_done"])

    @property
    def timesteps(self) -> list[int]:
        return list(self.manifest["timesteps"])[: self.steps_done]

    @property
    def has_maps(self) -> bool:
        return self.manifest["reduction"]["maps"]

    def disk_bytes(self) -> int:
        """Bytes the run takes on disk (manifest and arrays)."""
        return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file())

    def _half(self, array: np.ndarray, cond: bool | None) -> np.ndarray:
        layout = self.manifest["cfg"]["layout"]
        if cond is None or layout == "none":
            return array
        n = self.manifest["cfg"]["images"]
        first_is_cond = layout == "cond_first"
        return array[:, :n] if cond == first_is_cond else array[:, n:]

    def _block_index(self, block: str) -> int:
        if block not in self._index:
            raise StoreError(f"block {block!r} was not recorded; recorded: {', '.join(self.blocks)}")
        return self._index[block]

    def features(self, block: str, cond: bool | None = True) -> np.ndarray:
        """``[steps, batch, ...]`` maps of one block (only that block is read). ``cond``: True/False picks the CFG
        half, None returns both (as batched in the denoiser call)."""
        if not self.has_maps:
            raise StoreError(f"run {self.directory} stored statistics only (reduction 'stats'), no feature maps")
        arr = self._root[f"features/{self._block_index(block)}"][: self.steps_done]
        return self._half(arr, cond)

    def stats(self, block: str, cond: bool | None = True) -> dict[str, np.ndarray]:
        """Streaming statistics of one block: ``cosine`` and ``rel_l1`` to the previous step, ``[steps, batch]``."""
        i = self._block_index(block)
        return {k: self._half(self._root[f"stats/{k}"][: self.steps_done, i], cond) for k in ("cosine", "rel_l1")}

    def denoiser_output(self, cond: bool | None = True) -> np.ndarray:
        return self._half(self._root["denoiser_output"][: self.steps_done], cond)

    def latents(self) -> np.ndarray:
        return self._root["latents"][: self.steps_done]


def list_runs(root: str | Path) -> list[dict]:
    """Runs below ``root`` (each a folder with a manifest), newest first, with their status."""
    rows = []
    for path in sorted(Path(root).glob(f"**/{MANIFEST}")):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            rows.append(dict(path=str(path.parent), status="unreadable"))
            continue
        if m.get("format") != "frdiff-workbench-run":
            continue
        rows.append(dict(path=str(path.parent), model=m["model"]["id"], scheduler=m["scheduler"]["name"],
                         steps=m["steps"], steps_done=m["steps_done"], blocks=len(m["blocks"]),
                         reduction=m["reduction"]["name"], created=m["created"],
                         status="complete" if m["complete"] else "incomplete"))
    return sorted(rows, key=lambda r: r.get("created", ""), reverse=True)


def delete_run(directory: str | Path) -> None:
    """Delete a recorded run (refuses folders that are not runs)."""
    directory = Path(directory)
    if not (directory / MANIFEST).exists():
        raise StoreError(f"{directory} is not a recorded run; not deleting")
    shutil.rmtree(directory)
