"""A model folder's *policy metadata* (``policy-meta.json`` beside its weights): what ``policy make`` needs to know
of a model — its denoiser's architecture and fingerprint, its blocks, its scheduler's training timesteps and the
FLOP shares a reuse step saves — so that it can write a policy without building the model (no torch or diffusers
import: issue 21's 3-s budget for the CLI's writing commands).

The file is derived from the loaded model (:func:`derive`: exactly what the slow path computes) and written at
training time and by ``python -m workbench meta --model M`` (any local diffusers folder too). It is used only while
it provably describes the folder (:func:`problems`): the same format version, the same config files (SHA-256 of
``model_index.json`` and of every JSON file of the components it lists; weights do not enter the metadata), the
same diffusers and torch versions (the fingerprint holds diffusers' config defaults, the FLOP shares torch's FLOP
counter), and the weights files present with readable headers (so a folder the slow path cannot load is not served
either). Anything else — a hub id, a folder without the file, a stale file — takes the slow path, which loads the
model. ``tests/test_quick_policy.py`` checks the shipped files against the real models.

Reading this module imports neither torch nor diffusers (:func:`derive` imports them when called).
"""

from __future__ import annotations

import hashlib
import json
import struct
from importlib import metadata as _dist
from pathlib import Path

from workbench.models.catalog import EMBEDDED, embedded_path

FILE = "policy-meta.json"
FORMAT = "frdiff-workbench-policy-meta"
VERSION = 1
MAX_BYTES = 4 * 2**20  # a metadata file is a few kB; anything bigger is not one we wrote
# Components whose folders need no weights (as zoo._load_folder).
NO_WEIGHTS = ("scheduler", "tokenizer", "feature_extractor", "image_processor")
ABOUT = ("What `python -m workbench policy make` reads instead of loading this model (workbench/models/meta.py). "
         "Derived from the loaded model; regenerate with `python -m workbench meta --model <this folder>`.")


def model_folder(target: str) -> Path | None:
    """The folder :func:`workbench.models.zoo.load_pipeline` would load ``target`` from (an embedded name or a local
    folder), or ``None`` (a hub id, or nothing that exists)."""
    target = str(target).strip()
    if target in EMBEDDED:
        return embedded_path(target)
    if target and Path(target).expanduser().is_dir():
        return Path(target).expanduser()
    return None


def _components(index: dict) -> list[str]:
    """The components of a ``model_index.json`` (``[library, class]`` pairs with a library), as zoo loads them."""
    out = []
    for name, entry in index.items():
        is_component = isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str | None) for e in entry)
        if not name.startswith("_") and is_component and entry[0] is not None:
            out.append(name)
    return out


def _read_index(folder: Path) -> dict:
    """``model_index.json`` of ``folder``; ``ValueError`` when it is missing or not a JSON object."""
    path = folder / "model_index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is missing or not valid JSON ({exc})") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path} is not a JSON object")
    return index


def config_sources(folder: str | Path) -> dict[str, str]:
    """SHA-256 of the folder's config files: ``model_index.json`` and every ``*.json`` of each component it lists
    (relative paths, sorted). ``ValueError`` when ``model_index.json`` is missing or not valid JSON."""
    folder = Path(folder)
    index = _read_index(folder)
    files = [folder / "model_index.json"]
    for name in _components(index):
        files += sorted((folder / name).glob("*.json"))
    return {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def environment() -> dict[str, str]:
    """Versions the metadata depends on: diffusers (config defaults enter the fingerprint) and torch (its FLOP
    counter measures the shares); local build tags (``+cpu``, ``+cu128``) left out. ``ValueError`` if either is
    missing."""
    out = {}
    for name in ("diffusers", "torch"):
        try:
            out[name] = _dist.version(name).split("+")[0]
        except _dist.PackageNotFoundError:
            raise ValueError(f"{name} is not installed") from None
    return out


def _weights_problems(folder: Path, index: dict) -> list[str]:
    """What zoo._load_folder would refuse before building anything: a listed component folder missing, a component
    with a config but no .safetensors, a weights file whose header does not read."""
    out = []
    for name in _components(index):
        sub = folder / name
        if not sub.is_dir():
            out.append(f"component folder {sub} is missing")
            continue
        weights = sorted(sub.glob("*.safetensors"))
        if name not in NO_WEIGHTS and (sub / "config.json").exists() and not weights:
            out.append(f"{sub} has no .safetensors weights")
        for w in weights:
            if not _safetensors_header_reads(w):
                out.append(f"weights file {w} has no readable safetensors header")
    return out


def _safetensors_header_reads(path: Path) -> bool:
    """The 8-byte little-endian header length, then that many bytes of a JSON object, inside the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return False
            (length,) = struct.unpack("<Q", raw)
            if length > size - 8 or length > 100 * 2**20:
                return False
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(header, dict)


def problems(folder: str | Path, meta) -> list[str]:
    """Why ``meta`` may not stand in for the model in ``folder`` (empty: it may)."""
    folder = Path(folder)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return [f"not a {FORMAT} file"]
    if meta.get("version") != VERSION:
        return [f"metadata version {meta.get('version')!r}, this build reads {VERSION}"]
    out = []
    try:
        index = _read_index(folder)
        sources = config_sources(folder)
    except (OSError, ValueError) as exc:
        return [str(exc)]
    if meta.get("sources") != sources:
        recorded = meta.get("sources") if isinstance(meta.get("sources"), dict) else {}
        changed = sorted(set(recorded) ^ set(sources) | {k for k in sources if recorded.get(k) != sources[k]})
        out.append(f"config files changed since the metadata was written: {', '.join(changed)}")
    try:
        env = environment()
    except ValueError as exc:
        return out + [str(exc)]
    if meta.get("environment") != env:
        out.append(f"written with {meta.get('environment')}, this environment has {env}")
    out += _weights_problems(folder, index)
    out += _shape_problems(meta)
    return out


def _shape_problems(meta: dict) -> list[str]:
    """The fields the fast path reads, with the types it needs (a hand-edited file is refused, not half-used)."""
    model, blocks, savings = meta.get("model"), meta.get("blocks"), meta.get("savings")
    ok = (isinstance(model, dict) and all(isinstance(model.get(k), str) for k in ("architecture", "fingerprint"))
          and isinstance(meta.get("train_timesteps"), int) and not isinstance(meta.get("train_timesteps"), bool)
          and isinstance(blocks, list) and blocks
          and all(isinstance(b, list) and len(b) == 2 and all(isinstance(x, str) for x in b) for b in blocks)
          and isinstance(savings, dict))
    if not ok:
        return ["malformed metadata (model, train_timesteps, blocks or savings)"]
    names = [b[0] for b in blocks]
    if len(set(names)) != len(names):
        return ["malformed metadata: a block listed twice"]
    ints = ("batch", "element_bytes", "output_numel", "total_flops")
    if not all(isinstance(savings.get(k), int) and not isinstance(savings.get(k), bool) for k in ints):
        return ["malformed savings: batch, element_bytes, output_numel, total_flops must be integers"]
    cached = savings.get("cached_numel")
    for gran in ("feature", "block"):
        shares, numel = savings.get(gran), cached.get(gran) if isinstance(cached, dict) else None
        if not (isinstance(shares, dict) and isinstance(numel, dict) and all(
                isinstance(shares.get(n), float) and isinstance(numel.get(n), int) for n in names)):
            return [f"malformed savings: {gran} shares and cached sizes for every block"]
    return []


def read(folder: str | Path) -> tuple[dict | None, list[str]]:
    """``(metadata, [])`` when ``folder`` holds a metadata file that describes it, else ``(None, reasons)``."""
    path = Path(folder) / FILE
    try:
        if not path.is_file():
            return None, [f"no {FILE} in {folder}"]
        if path.stat().st_size > MAX_BYTES:
            return None, [f"{path} is larger than {MAX_BYTES} bytes"]
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, [f"{path} does not read: {exc}"]
    reasons = problems(folder, meta)
    return (None, reasons) if reasons else (meta, [])


def load(target: str) -> dict | None:
    """The metadata of the model ``target`` names (an embedded name or a local folder), or ``None`` when there is
    none that may stand in for it (then the model must be loaded)."""
    folder = model_folder(target)
    return read(folder)[0] if folder is not None else None


def derive(pipe, folder: str | Path) -> dict:
    """The metadata of ``pipe``, the pipeline loaded from ``folder`` (on the CPU, in float32, as ``policy make``
    loads it): every value computed by the code the slow path runs. Imports torch and diffusers."""
    import frdiff
    from frdiff.policy import model_ref
    from workbench.compare import measure_savings
    from workbench.models.schedulers import train_timesteps

    den = frdiff.denoiser_of(pipe)
    return {"format": FORMAT, "version": VERSION, "about": ABOUT, "environment": environment(),
            "sources": config_sources(folder), "model": model_ref(den),
            "train_timesteps": train_timesteps(pipe.scheduler),
            "blocks": [[name, kind] for name, kind in frdiff.find_blocks(den)],
            "savings": measure_savings(pipe)}


def to_text(meta: dict) -> str:
    return json.dumps(meta, indent=1) + "\n"


def write(folder: str | Path, pipe=None) -> Path:
    """Derive the metadata of the model in ``folder`` (loading it on the CPU unless ``pipe``, loaded from there, is
    given) and write it there as :data:`FILE`."""
    folder = Path(folder)
    if pipe is None:
        from workbench.models.zoo import load_pipeline

        pipe = load_pipeline(str(folder), device="cpu")
    path = folder / FILE
    tmp = path.with_name(f".{FILE}.tmp")
    tmp.write_text(to_text(derive(pipe, folder)), encoding="utf-8")
    tmp.replace(path)
    return path
