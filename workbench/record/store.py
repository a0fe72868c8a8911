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

Stores check themselves (format version 2): every chunk carries a crc32c checksum (zarr's ``crc32c`` codec), and
each flush records in the manifest what it wrote (``written``: the steps and, per array, the number of chunks).
:meth:`FeatureStore.open` validates the manifest (types, ``steps_done`` against the recorded timesteps and the
write record) and compares the chunk files present with what the steps done need; a missing array or chunk is a
:class:`StoreError` naming the block and steps (or, with ``allow_damaged=True``, a ``damage`` list, and reading
those steps raises), a chunk that fails its checksum raises when read -- never zeros. Stores of version 1 (no
checksums, no write record) open with the checks that apply to them.

Recording never replaces data it did not create: :func:`check_out_dir` refuses a folder holding an earlier run
(unless overwriting, which then removes only the run's own files: :func:`remove_run_files`) or other files.
"""


from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr

from workbench.errors import UserError

MANIFEST = "manifest.json"
ARRAYS = "arrays.zarr"
FORMAT = "frdiff-workbench-run"
VERSION = 2  # 2: crc32c chunks and the manifest's ``written`` record; 1: neither (still read)
VERSIONS = (1, 2)
LAYOUTS = ("none", "uncond_first", "cond_first")
PART = re.compile(r"part-\d{5}")  # a rank's part of a sharded run (``record_sharded``)
_TEMPORARY = re.compile(r"\.manifest(-.*\.json|\.json\..*\.tmp)")  # write_manifest's temporary file (this or an older
# naming), left by a hard kill


class StoreError(RuntimeError):
    """A store is missing, unreadable, damaged or does not hold what was asked for."""


class OutDirError(StoreError, UserError):
    """A recording's output folder cannot be used without losing data (an earlier run, other files, a file): input
    the user can fix, reported as its message alone (CLI, torchrun ranks, app)."""


def write_manifest(directory: Path, manifest: dict) -> None:
    """Write ``manifest.json`` atomically (readers see the old or the new file, never a mix)."""
    from workbench.files import replacing

    with replacing(directory / MANIFEST) as f:
        json.dump(manifest, f, indent=2, default=str)


# ---- what a flush wrote, and what the steps done need --------------------------------------------------------------
def chunk_coords(shape: tuple[int, ...], chunks: tuple[int, ...], steps: int) -> list[tuple[int, ...]]:
    """Coordinates of the chunks that hold steps ``[0, steps)`` of an array whose first axis is the step."""
    k = int(chunks[0])
    rest = [range(math.ceil(int(s) / int(c))) for s, c in zip(shape[1:], chunks[1:], strict=True)]
    return [(i, *r) for i in range(math.ceil(steps / k)) for r in itertools.product(*rest)]


def written_record(arrays: dict[str, zarr.Array], steps: int) -> dict:
    """The manifest's ``written`` entry after a flush: the steps written and, per array, its chunks so far."""
    return {"steps": steps, "chunks": {key: len(chunk_coords(a.shape, a.chunks, steps)) for key, a in arrays.items()}}


def step_ranges(steps: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``"0-2, 5, 7-8"``."""
    steps = sorted(set(steps))
    out = []
    for _, group in itertools.groupby(enumerate(steps), lambda p: p[1] - p[0]):
        g = [s for _, s in group]
        out.append(str(g[0]) if len(g) == 1 else f"{g[0]}-{g[-1]}")
    return ", ".join(out)


# ---- the manifest ---------------------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_manifest(path: Path) -> dict:
    """The manifest at ``path`` as a dict of the run format (any version), or a :class:`StoreError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{path} is not UTF-8 text: not a run manifest") from None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise StoreError(f"{path} is nested too deeply to be a run manifest") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"{path} is not a workbench run manifest (a JSON {type(manifest).__name__}, not an object)")
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not a workbench run manifest")
    if manifest.get("version", 1) not in VERSIONS:
        raise StoreError(f"{path}: unsupported run format version {manifest.get('version')!r} "
                         f"(this workbench reads {', '.join(map(str, VERSIONS))})")
    return manifest


def manifest_problems(m: dict) -> list[str]:
    """What is wrong with a single store's (or a part's) manifest: missing keys, wrong types, counts that
    disagree. An empty list for a manifest the reader can trust."""
    p: list[str] = []

    def need(key: str, kind, what: str) -> bool:
        if key not in m:
            p.append(f"no {key!r}")
            return False
        ok = _is_int(m[key]) if kind is int else isinstance(m[key], kind)
        if not ok:
            p.append(f"{key!r} is not {what} ({type(m[key]).__name__})")
        return ok

    if need("model", dict, "an object") and not isinstance(m["model"].get("id"), str):
        p.append("model.id is not a string")
    if need("scheduler", dict, "an object"):
        s = m["scheduler"]
        if not (isinstance(s.get("name"), str) and isinstance(s.get("class"), str)
                and isinstance(s.get("config"), dict)):
            p.append("scheduler needs a name, a class and a config")
    steps_ok = need("steps", int, "an integer") and m["steps"] >= 1
    if "steps" in m and _is_int(m["steps"]) and m["steps"] < 1:
        p.append(f"steps is {m['steps']}")
    done_ok = need("steps_done", int, "an integer")
    if need("timesteps", list, "a list") and steps_ok and len(m["timesteps"]) != m["steps"]:
        p.append(f"{len(m['timesteps'])} timesteps for {m['steps']} steps")
    if done_ok and steps_ok and not 0 <= m["steps_done"] <= m["steps"]:
        p.append(f"steps_done {m['steps_done']} is not between 0 and steps ({m['steps']})")
        done_ok = False
    # steps_done may claim fewer steps than were written (the reader then reads a prefix that is there), never more
    if need("recorded_timesteps", list, "a list") and done_ok and len(m["recorded_timesteps"]) < m["steps_done"]:
        p.append(f"steps_done is {m['steps_done']} but only {len(m['recorded_timesteps'])} timesteps were recorded "
                 "(the manifest was altered)")
    if need("complete", bool, "true or false") and m["complete"] and done_ok and steps_ok \
            and m["steps_done"] != m["steps"]:
        p.append(f"complete, but {m['steps_done']} of {m['steps']} steps done")
    if need("cfg", dict, "an object"):
        cfg = m["cfg"]
        images, batch = cfg.get("images"), cfg.get("batch")
        if cfg.get("layout") not in LAYOUTS:
            p.append(f"cfg.layout is {cfg.get('layout')!r}, not one of {', '.join(LAYOUTS)}")
        elif not (_is_int(images) and images >= 1 and _is_int(batch)
                  and batch == (images if cfg["layout"] == "none" else 2 * images)):
            p.append(f"cfg.images {images!r} and cfg.batch {batch!r} do not fit the layout {cfg['layout']!r}")
    if need("blocks", list, "a list"):
        names = []
        for i, b in enumerate(m["blocks"]):
            if not (isinstance(b, dict) and isinstance(b.get("name"), str) and isinstance(b.get("output_shape"), list)
                    and all(_is_int(x) for x in b["output_shape"])):
                p.append(f"blocks[{i}] is not a block (name, output_shape)")
                break
            names.append(b["name"])
        if len(set(names)) != len(names):
            p.append("block names repeat")
    if need("reduction", dict, "an object") and not (isinstance(m["reduction"].get("maps"), bool)
                                                     and isinstance(m["reduction"].get("name"), str)):
        p.append("reduction needs a name and maps (true/false)")
    if need("seeds", list, "a list") and isinstance(m.get("cfg"), dict) and _is_int(m["cfg"].get("images")) \
            and len(m["seeds"]) != m["cfg"]["images"]:
        p.append(f"{len(m['seeds'])} seeds for {m['cfg']['images']} images")
    if "guidance_scale" in m and (isinstance(m["guidance_scale"], bool)
                                  or not isinstance(m["guidance_scale"], int | float)):
        p.append("guidance_scale is not a number")
    if m.get("version", 1) >= 2:
        w = m.get("written")
        if not (isinstance(w, dict) and _is_int(w.get("steps")) and isinstance(w.get("chunks"), dict)
                and all(_is_int(v) for v in w["chunks"].values())):
            p.append("no valid 'written' record (steps and chunks written)")
        elif done_ok and w["steps"] < m["steps_done"]:
            p.append(f"steps_done is {m['steps_done']} but the write record says only {w['steps']} steps were "
                     "written (the manifest was altered)")
    return p


def _top_problems(m: dict) -> list[str]:
    """What is wrong with a sharded run's top manifest."""
    p = []
    parts = m.get("parts")
    if not isinstance(parts, list) or not parts:
        return ["'parts' is not a non-empty list"]
    for i, e in enumerate(parts):
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and PART.fullmatch(e["path"])
                and _is_int(e.get("rank")) and isinstance(e.get("seeds"), list)):
            p.append(f"parts[{i}] is not a part (path part-NNNNN, rank, seeds)")
    if not isinstance(m.get("complete"), bool):
        p.append("'complete' is not true or false")
    if not isinstance(m.get("failed", []), list):
        p.append("'failed' is not a list")
    return p


# ---- output folders: never replace or delete what a recording did not make ----------------------------------------
def _run_manifest(directory: Path) -> dict | None:
    """The run manifest in ``directory``, or None when there is none or it is not one."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return _read_manifest(path)
    except StoreError:
        return None


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk(path: str | Path) -> int:
    """Free bytes on the disk that holds (or will hold) ``path``: measured at its nearest existing folder, so that
    asking creates nothing."""
    return shutil.disk_usage(_nearest_existing(Path(path))).free


def check_out_dir(directory: str | Path, overwrite: bool = False, sharded: bool = False) -> bool:
    """May a recording write into ``directory``? True when it holds an earlier run that ``overwrite`` allows to be
    replaced, False when it is new or empty; otherwise an :class:`OutDirError` saying why not. Reads only.

    ``sharded``: the top folder of a torchrun recording, whose ``part-NNNNN`` entries each rank checks itself."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutDirError(f"{directory} is a file, not a folder: give a new folder for the run")
    if not directory.exists():
        above = _nearest_existing(directory)
        if not above.is_dir():
            raise OutDirError(f"cannot make {directory}: {above} is a file, not a folder")
        return False
    try:
        entries = sorted(e.name for e in directory.iterdir())
    except OSError as exc:
        raise OutDirError(f"cannot read {directory}: {exc.strerror or exc}") from None
    if sharded:
        entries = [e for e in entries if not PART.fullmatch(e)]
    if not entries:
        return False
    manifest = _run_manifest(directory)
    if manifest is None:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise OutDirError(f"{directory} is not empty and not a recorded run (it holds {shown}); "
                          "record into a new or empty folder")
    if not overwrite:
        what = manifest.get("model", {}).get("id", "?") if isinstance(manifest.get("model"), dict) else "?"
        raise OutDirError(f"{directory} already holds a recorded run ({what}); record into a new folder, or pass "
                          "--overwrite to replace that run (only its manifest.json, arrays.zarr and part-* folders; "
                          "other files stay)")
    return True


def _run_parts(directory: Path) -> list[Path]:
    """The part folders of the (sharded) run in ``directory``: every ``part-NNNNN`` folder that holds a run
    manifest (one without is someone else's, or its rank never wrote, and is left alone)."""
    return [e for e in sorted(directory.iterdir()) if PART.fullmatch(e.name) and e.is_dir()
            and _run_manifest(e) is not None]


def run_bytes(directory: str | Path) -> int:
    """Bytes of the run's own files in ``directory`` (what :func:`remove_run_files` would free)."""
    directory = Path(directory)
    total = 0
    for path in _run_paths(directory, keep_parts=()):
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    return total


def _run_paths(directory: Path, keep_parts: Iterable[str]) -> list[Path]:
    keep = set(keep_parts)
    paths = [p for p in _run_parts(directory) if p.name not in keep]
    paths += [directory / ARRAYS] if (directory / ARRAYS).exists() else []
    paths += [e for e in directory.iterdir() if _TEMPORARY.fullmatch(e.name) or _stale_swap(e)]
    return paths + ([directory / MANIFEST] if (directory / MANIFEST).exists() else [])


_SWAP = re.compile(r"\.(new|old)-(\d+)")  # record --overwrite's folders inside the run it replaces


def _stale_swap(path: Path) -> bool:
    """A ``.new-PID`` / ``.old-PID`` folder that ``record --overwrite`` left inside a run when its process was killed
    (the run's own, removed with it); one whose process still runs is another overwrite in progress."""
    match = _SWAP.fullmatch(path.name)
    if not match or not path.is_dir():
        return False
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        pass
    return False


def remove_run_files(directory: str | Path, keep_parts: Iterable[str] = ()) -> None:
    """Delete what a recording wrote into ``directory`` -- ``arrays.zarr``, the ``part-*`` folders of a sharded run
    (but ``keep_parts``), manifest temporaries and, last, ``manifest.json`` -- and nothing else: other files stay."""
    _remove(_run_paths(Path(directory), keep_parts))


def _remove(paths: list[Path]) -> None:
    """Delete ``paths`` (a run's own, from ``_run_paths``): a part folder keeps other files, the rest goes whole."""
    for path in paths:
        if path.is_dir() and PART.fullmatch(path.name):
            remove_run_files(path)
            with contextlib.suppress(OSError):  # other files are left in it
                path.rmdir()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def replace_run(new: str | Path, target: str | Path) -> None:
    """Move the complete run recorded in ``new`` (a folder inside ``target``: the same file system) over the earlier
    run in ``target`` (``record --overwrite``). The earlier manifest and arrays are renamed aside, the new arrays and
    then the new manifest renamed in — renames only, so the moment without a whole run is that short — and only then
    is the earlier run deleted (its part folders as ``remove_run_files`` does: other files stay)."""
    new, target = Path(new), Path(target)
    rest = [p for p in _run_paths(target, ()) if p.name not in (MANIFEST, ARRAYS)]  # parts, temporaries, leftovers
    trash = target / f".old-{os.getpid()}"
    trash.mkdir(exist_ok=True)
    for name in (MANIFEST, ARRAYS):
        if (target / name).exists():
            os.replace(target / name, trash / name)
    for entry in sorted(new.iterdir(), key=lambda p: p.name == MANIFEST):  # the manifest last
        os.replace(entry, target / entry.name)
    new.rmdir()
    _remove(rest)
    shutil.rmtree(trash, ignore_errors=True)


# ---- reading --------------------------------------------------------------------------------------------------------
class FeatureStore:
    """Read access to a recorded run. ``FeatureStore.open(DIR)``; arrays load lazily, block by block.

    ``damage``: what is missing from a store opened with ``allow_damaged=True`` (empty for a sound one); reading a
    damaged array raises :class:`StoreError`."""

    def __init__(self, directory: Path, manifest: dict, root: zarr.Group | None,
                 parts: list[FeatureStore] | None = None):
        self.directory = directory
        self.manifest = manifest
        self._root = root
        self.parts = parts or []  # the per-rank stores of a sharded run (empty for a single-process one)
        self._index = {b["name"]: i for i, b in enumerate(manifest["blocks"])}
        self.damage: list[str] = []
        self._damaged: dict[str, str] = {}  # array key → what is missing

    @classmethod
    def open(cls, directory: str | Path, allow_damaged: bool = False) -> FeatureStore:
        """Open and check a run. A manifest that cannot be trusted or an array or chunk the steps done need that is
        not there raises :class:`StoreError` (one line naming the block and steps); with ``allow_damaged`` the
        missing parts go to ``damage`` instead and only reading them raises."""
        directory = Path(directory)
        if not directory.exists():
            raise StoreError(f"{directory} does not exist")
        if not directory.is_dir():
            raise StoreError(f"{directory} is a file, not a run folder")
        path = directory / MANIFEST
        if not path.exists():
            raise StoreError(f"{directory} is not a recorded run: {MANIFEST} is missing")
        manifest = _read_manifest(path)
        if "parts" in manifest:
            problems = _top_problems(manifest)
            if problems:
                raise StoreError(f"{path} is not a valid run manifest: {'; '.join(problems)}")
            store = cls._open_parts(directory, manifest)
        else:
            problems = manifest_problems(manifest)
            if problems:
                raise StoreError(f"{path} is not a valid run manifest: {'; '.join(problems)}")
            if not (directory / ARRAYS).is_dir():
                raise StoreError(f"{directory} has a manifest but no {ARRAYS}: the run wrote nothing yet")
            try:
                root = zarr.open_group(str(directory / ARRAYS), mode="r")
            except (FileNotFoundError, ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"{directory / ARRAYS} is not a readable zarr group: {exc}") from None
            store = cls(directory, manifest, root)
            store._verify()
        if store.damage and not allow_damaged:
            raise StoreError(f"{directory} is damaged: {'; '.join(store.damage)}")
        return store

    def _expected_arrays(self) -> list[tuple[str, str]]:
        """(array key, what it is) of every array the manifest says the store holds."""
        out = [(f"stats/{k}", f"stats/{k}") for k in ("cosine", "rel_l1")]
        if self.has_maps:
            out += [(f"features/{i}", f"block {b} (features/{i})") for i, b in enumerate(self.blocks)]
        return out + [("denoiser_output", "denoiser_output"), ("latents", "latents")]

    def _label(self, key: str) -> str:
        return dict(self._expected_arrays()).get(key, key)

    def _verify(self) -> None:
        """Compare the arrays and chunk files present with what the manifest says was written (cheap: metadata and
        a listing of the chunk files, no chunk is read). Fills ``damage``."""
        m = self.manifest
        n, steps = self.steps_done, int(m["steps"])
        written = m.get("written")  # None: a version-1 store
        cfg = m["cfg"]
        for key, label in self._expected_arrays():
            try:
                array = self._root[key]
            except (KeyError, FileNotFoundError, ValueError, TypeError):
                array = None
            if not isinstance(array, zarr.Array):
                there = (self.directory / ARRAYS / key).exists()
                self._mark(key, f"{label} is {'unreadable' if there else 'missing'}")
                continue
            lead = (steps, len(self.blocks), cfg["batch"]) if key.startswith("stats/") else \
                (steps, cfg["images"] if key == "latents" else cfg["batch"])
            if tuple(array.shape[: len(lead)]) != lead:
                self._mark(key, f"{label} has shape {list(array.shape)}, which does not fit {steps} steps, "
                                f"{len(self.blocks)} blocks and a batch of {cfg['batch']}")
                continue
            if written is None and key.startswith("stats/"):
                continue  # version 1 skipped chunks equal to the fill value (NaN): absence proves nothing there
            if written is not None and key in written["chunks"]:
                need = len(chunk_coords(array.shape, array.chunks, written["steps"]))
                if written["chunks"][key] != need:
                    self._mark(key, f"{label}: the manifest records {written['chunks'][key]} chunks written, but "
                                    f"{written['steps']} steps need {need} (the manifest was altered)")
                    continue
            # one stat per chunk the steps done need (zarr's unfinished writes, *.partial, are never chunks)
            folder = os.path.join(self.directory, ARRAYS, *key.split("/"))
            k = int(array.chunks[0])
            encode = array.metadata.encode_chunk_key
            missing = sorted({s for c in chunk_coords(array.shape, array.chunks, n)
                              if not os.path.isfile(os.path.join(folder, *encode(c).split("/")))
                              for s in range(c[0] * k, min((c[0] + 1) * k, n))})
            if missing:
                self._mark(key, f"{label} has no data for step(s) {step_ranges(missing)} (chunk files missing)")

    def _mark(self, key: str, what: str) -> None:
        self.damage.append(what)
        self._damaged[key] = what

    def check_intact(self, key: str) -> None:
        """Raise :class:`StoreError` when array ``key`` is one of the store's ``damage`` (missing, chunks missing)."""
        if key in self._damaged:
            raise StoreError(f"{self.directory} is damaged: {self._damaged[key]}")

    def read_array(self, key: str, *selection) -> np.ndarray:
        """Steps ``[0, steps_done)`` of array ``key``, then ``selection`` on its other axes; a missing or damaged
        array or a chunk that fails its checksum is a :class:`StoreError` naming the block and steps."""
        self.check_intact(key)
        try:
            array = self._root[key]
        except (KeyError, FileNotFoundError) as exc:
            raise StoreError(f"{self.directory}: {self._label(key)} is missing ({exc})") from None
        n = self.steps_done
        try:
            return array[(slice(0, n), *selection)]
        except Exception as exc:  # noqa: BLE001 - a chunk that fails its checksum or cannot be decoded
            raise StoreError(f"{self.directory}: {self._label(key)} is corrupt at step(s) "
                             f"{step_ranges(bad_steps(array, n)) or '?'} ({type(exc).__name__}: {exc})") from None

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
        return self._half(self.read_array(f"features/{self._block_index(block)}"), cond)

    def stats(self, block: str, cond: bool | None = True) -> dict[str, np.ndarray]:
        """Streaming statistics of one block: ``cosine`` and ``rel_l1`` to the previous step, ``[steps, batch]``."""
        i = self._block_index(block)
        if self.parts:
            return {k: self.join_parts(lambda p, c, k=k: p.stats(block, c)[k], cond) for k in ("cosine", "rel_l1")}
        return {k: self._half(self.read_array(f"stats/{k}", i), cond) for k in ("cosine", "rel_l1")}

    def denoiser_output(self, cond: bool | None = True) -> np.ndarray:
        if self.parts:
            return self.join_parts(lambda p, c: p.denoiser_output(c), cond)
        return self._half(self.read_array("denoiser_output"), cond)

    def latents(self) -> np.ndarray:
        if self.parts:
            return self.join_parts(lambda p, _c: p.latents(), None, halves=False)
        return self.read_array("latents")

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

    @classmethod
    def _open_parts(cls, directory: Path, top: dict) -> FeatureStore:
        """A sharded run as one: the first readable part's manifest with seeds, conditions and sizes of all the
        readable parts, ``steps_done`` the fewest any of them finished, ``complete`` only when every part is.

        A part its rank never wrote (no folder or no manifest, or not one step finished) is left out; a part that
        was written but is damaged or not a valid store makes the run damaged (its data is not silently dropped)."""
        parts, missing, damage = [], [], []
        for entry in top["parts"]:
            folder = directory / entry["path"]
            if not (folder / MANIFEST).is_file():  # its rank failed before writing (or was never started)
                missing.append(entry)
                continue
            try:
                part = cls.open(folder, allow_damaged=True)
            except StoreError as exc:
                damage.append(f"{entry['path']}: {exc}")
                continue
            if part.steps_done == 0 and not part.complete:  # its rank failed before finishing one step
                missing.append(entry)
                continue
            damage += [f"{entry['path']}: {d}" for d in part.damage]
            parts.append(part)
        if not parts:
            failed = "; ".join(f"rank {f.get('rank')}: {f.get('error')}" for f in top.get("failed", [])
                               if isinstance(f, dict))
            why = damage or ([failed] if failed else [])
            raise StoreError(f"no part of the sharded run {directory} is readable" + (f" ({'; '.join(why)})"
                                                                                        if why else ""))
        m = copy.deepcopy(parts[0].manifest)
        for key in ("part", "error", "written"):
            m.pop(key, None)
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
        m["estimate_bytes"] = sum(p.manifest.get("estimate_bytes", 0) for p in parts)
        m["timing"] = {k: max(p.manifest.get("timing", {}).get(k, 0.0) for p in parts)
                       for k in ("plan_s", "sampling_s")}
        m["timing"]["per_rank"] = {str(p.manifest.get("part", {}).get("rank")): p.manifest.get("timing", {})
                                   for p in parts}
        m["complete"] = bool(top["complete"]) and not missing and all(p.complete for p in parts)
        m["missing_seeds"] = [s for e in missing for s in e["seeds"]]
        for key in ("sharded", "world_size", "parts", "failed", "created"):
            m[key] = top.get(key)
        store = cls(directory, m, None, parts)
        store.damage = damage
        return store


def bad_steps(array: zarr.Array, steps: int) -> list[int]:
    """Steps ``[0, steps)`` of ``array`` whose chunks cannot be read (checksum mismatch, truncated file): read one
    step-chunk at a time. Only called once a read failed."""
    k = int(array.chunks[0])
    bad = []
    for i in range(math.ceil(steps / k)):
        lo, hi = i * k, min((i + 1) * k, steps)
        try:
            array[lo:hi]
        except Exception:  # noqa: BLE001 - any decoding failure marks the steps
            bad.extend(range(lo, hi))
    return bad


def _is_part_of_a_run(manifest_path: Path) -> bool:
    folder = manifest_path.parent
    return bool(PART.fullmatch(folder.name)) and (folder.parent / MANIFEST).is_file()


def list_runs(root: str | Path) -> list[dict]:
    """Runs below ``root`` (each a folder with a manifest), newest first, with their status: ``complete``,
    ``incomplete``, ``damaged`` (chunks or arrays missing: ``reason`` names them) or ``broken`` (the manifest or
    the arrays cannot be read: ``reason`` says why). Every row has the same keys (None where unknown); one bad run
    never stops the listing."""
    rows = []
    for path in sorted(Path(root).glob(f"**/{MANIFEST}")):
        if ARRAYS in path.parts or _is_part_of_a_run(path):  # a part is listed as its sharded run
            continue
        if any(_SWAP.fullmatch(name) for name in path.relative_to(root).parts[:-1]):  # an overwrite in progress
            continue
        row = dict(path=str(path.parent), model=None, scheduler=None, steps=None, steps_done=None, blocks=None,
                   reduction=None, created=None, status="broken", reason=None)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            rows.append({**row, "reason": f"{MANIFEST} cannot be read: {exc}"})
            continue
        if isinstance(raw, dict) and raw.get("format") != FORMAT:
            continue  # some other tool's manifest.json
        try:
            store = FeatureStore.open(path.parent, allow_damaged=True)
        except StoreError as exc:
            rows.append({**row, "reason": str(exc)})
            continue
        m = store.manifest
        status = "damaged" if store.damage else "complete" if store.complete else "incomplete"
        reason = "; ".join(store.damage) if store.damage else (m.get("error") if not store.complete else None)
        rows.append({**row, "model": m["model"]["id"], "scheduler": m["scheduler"]["name"], "steps": m["steps"],
                     "steps_done": m["steps_done"], "blocks": len(m["blocks"]), "reduction": m["reduction"]["name"],
                     "created": m.get("created"), "status": status, "reason": reason})
    return sorted(rows, key=lambda r: str(r.get("created") or ""), reverse=True)


def delete_run(directory: str | Path) -> None:
    """Delete a recorded run: its manifest, arrays and parts (refuses folders without a manifest). Other files in
    the folder stay; the folder goes when nothing else is left in it."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        raise StoreError(f"{directory} is not a recorded run; not deleting")
    remove_run_files(directory)
    with contextlib.suppress(OSError):  # other files are left in it
        directory.rmdir()
