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

A run recorded under ``torchrun`` (:func:`workbench.record.recorder.record_sharded`) is split by seeds into parts,
one per rank, each a store of the layout above::

    manifest.json                 written by rank 0: ``parts`` (folder, rank, seeds of each), all seeds and
                                  conditions, ``complete``, ``failed`` (rank and error of each failed rank)
    part-00000/                   rank 0's seeds: manifest.json (with ``part``) + arrays.zarr
    part-00001/                   rank 1's seeds ...

:meth:`FeatureStore.open` reads such a folder as one run: arrays are the parts' arrays joined along the batch axis
in seed order (each CFG half joined separately, so the layout is the single-process one). A part that is missing or
unreadable (its rank failed before writing) is left out: the run then holds the other parts' seeds only
(``missing_seeds`` names the rest) and is incomplete.
"""

from __future__ import annotations

import copy
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

    def __init__(self, directory: Path, manifest: dict, root: zarr.Group | None,
                 parts: list[FeatureStore] | None = None):
        self.directory = directory
        self.manifest = manifest
        self._root = root
        self.parts = parts or []  # the per-rank stores of a sharded run (empty for a single-process one)
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
        if "parts" in manifest:
            return cls._open_parts(directory, manifest)
        try:
            root = zarr.open_group(str(directory / ARRAYS), mode="r")
        except FileNotFoundError:
            raise StoreError(f"{directory} has a manifest but no {ARRAYS}: the run wrote nothing yet") from None
        return cls(directory, manifest, root)

    @classmethod
    def _open_parts(cls, directory: Path, top: dict) -> FeatureStore:
        """A sharded run as one: the first readable part's manifest with seeds, conditions and sizes of all the
        readable parts, ``steps_done`` the fewest any of them finished, ``complete`` only when every part is."""
        parts, missing = [], []
        for entry in top["parts"]:
            try:
                part = cls.open(directory / entry["path"])
            except (StoreError, OSError):
                missing.append(entry)
                continue
            if part.steps_done == 0 and not part.complete:  # its rank failed before finishing one step
                missing.append(entry)
            else:
                parts.append(part)
        if not parts:
            failed = "; ".join(f"rank {f['rank']}: {f['error']}" for f in top.get("failed", []))
            raise StoreError(f"no part of the sharded run {directory} is readable" + (f" ({failed})" if failed else ""))
        m = copy.deepcopy(parts[0].manifest)
        m.pop("part", None)
        m.pop("error", None)
        images = sum(p.manifest["cfg"]["images"] for p in parts)
        m["seeds"] = [s for p in parts for s in p.manifest["seeds"]]
        m["conditions"] = [c for p in parts for c in p.manifest["conditions"]]
        batch, part_batch = sum(p.manifest["cfg"]["batch"] for p in parts), m["cfg"]["batch"]
        m["cfg"] = {**m["cfg"], "images": images, "batch": batch}
        for b in m["blocks"]:  # shapes and FLOPs of the whole batch, as one process records them
            b["output_shape"][0] = b["output_shape"][0] // part_batch * batch
            if "flops" in b:
                b["flops"] = b["flops"] // part_batch * batch
        m["steps_done"] = min(p.steps_done for p in parts)
        m["recorded_timesteps"] = m["recorded_timesteps"][: m["steps_done"]]
        m["estimate_bytes"] = sum(p.manifest["estimate_bytes"] for p in parts)
        m["timing"] = {k: max(p.manifest.get("timing", {}).get(k, 0.0) for p in parts)
                       for k in ("plan_s", "sampling_s")}
        m["timing"]["per_rank"] = {str(p.manifest["part"]["rank"]): p.manifest.get("timing", {}) for p in parts}
        m["complete"] = bool(top["complete"]) and not missing and all(p.complete for p in parts)
        m["missing_seeds"] = [s for e in missing for s in e["seeds"]]
        for key in ("sharded", "world_size", "parts", "failed", "created"):
            m[key] = top.get(key)
        return cls(directory, m, None, parts)

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
        if self.parts:
            return self.join_parts(lambda p, c: p.features(block, c), cond)
        arr = self._root[f"features/{self._block_index(block)}"][: self.steps_done]
        return self._half(arr, cond)

    def stats(self, block: str, cond: bool | None = True) -> dict[str, np.ndarray]:
        """Streaming statistics of one block: ``cosine`` and ``rel_l1`` to the previous step, ``[steps, batch]``."""
        i = self._block_index(block)
        if self.parts:
            return {k: self.join_parts(lambda p, c, k=k: p.stats(block, c)[k], cond) for k in ("cosine", "rel_l1")}
        return {k: self._half(self._root[f"stats/{k}"][: self.steps_done, i], cond) for k in ("cosine", "rel_l1")}

    def denoiser_output(self, cond: bool | None = True) -> np.ndarray:
        if self.parts:
            return self.join_parts(lambda p, c: p.denoiser_output(c), cond)
        return self._half(self._root["denoiser_output"][: self.steps_done], cond)

    def latents(self) -> np.ndarray:
        if self.parts:
            return self.join_parts(lambda p, _c: p.latents(), None, halves=False)
        return self._root["latents"][: self.steps_done]

    def join_parts(self, read, cond: bool | None, axis: int = 1, halves: bool = True) -> np.ndarray:
        """``read(part, cond)`` of every part of a sharded run, joined along the batch ``axis`` in seed order and
        cut to ``steps_done``. With ``cond=None`` and CFG (``halves``), each half is joined on its own and the two
        put in the run's layout order, as a single-process store holds them."""
        n = self.steps_done
        layout = self.manifest["cfg"]["layout"]

        def joined(c):
            return np.concatenate([read(p, c)[:n] for p in self.parts], axis=axis)

        if cond is not None or layout == "none" or not halves:
            return joined(cond)
        first_is_cond = layout == "cond_first"
        return np.concatenate([joined(first_is_cond), joined(not first_is_cond)], axis=axis)


def list_runs(root: str | Path) -> list[dict]:
    """Runs below ``root`` (each a folder with a manifest), newest first, with their status."""
    rows = []
    for path in sorted(Path(root).glob(f"**/{MANIFEST}")):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            rows.append(dict(path=str(path.parent), status="unreadable"))
            continue
        if m.get("format") != "frdiff-workbench-run" or "part" in m:  # a part is listed as its sharded run
            continue
        if "parts" in m:
            try:
                m = FeatureStore.open(path.parent).manifest
            except StoreError:
                rows.append(dict(path=str(path.parent), status="unreadable"))
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
