"""Policy helpers behind the app's builder and library pages (pure: no Streamlit, unit-tested).

The builder edits a policy's keyframe mask as a boolean table, blocks × steps (``True`` = keyframe: the block is
computed at that step; ``False`` = it reuses its cache). The library is a folder of policy JSON files
(``frdiff-policy`` format), one per name; measured metrics are kept in each policy's provenance.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import frdiff
from frdiff import Mixing, Policy, PolicyError


# ---- the keyframe grid ---------------------------------------------------------------------------------------------
def mask_frame(policy: Policy) -> pd.DataFrame:
    """The policy's keyframes as a boolean DataFrame: one row per block, one column per step (``"0"``, ``"1"``…)."""
    return pd.DataFrame(policy.keyframes.numpy().astype(bool), index=list(policy.blocks),
                        columns=[str(s) for s in range(policy.steps)])


def frame_mask(frame: pd.DataFrame) -> torch.Tensor:
    """A keyframe DataFrame (as :func:`mask_frame` makes it, possibly edited) back to a bool tensor ``[blocks, steps]``;
    missing cells count as keyframes."""
    values = frame.astype("boolean").fillna(True).to_numpy(dtype=bool)
    return torch.from_numpy(np.ascontiguousarray(values))


def with_mask(policy: Policy, mask: torch.Tensor) -> Policy:
    """A copy of ``policy`` with another keyframe mask (provenance says it was edited)."""
    out = copy.deepcopy(policy)
    out.keyframes = torch.as_tensor(mask, dtype=torch.bool).clone()
    if not torch.equal(out.keyframes, policy.keyframes):
        prov = dict(out.provenance)
        if prov.get("made_by") != "builder":
            prov = {"made_by": "builder", "source": policy.provenance}
        out.provenance = prov
    return out


def set_blocks(mask: torch.Tensor, rows: list[int], keyframe: bool, every: int | None = None) -> torch.Tensor:
    """Whole rows: blocks ``rows`` become keyframes at every step (``keyframe``) or reuse everywhere except step 0;
    with ``every`` = M, keyframes at steps 0, M, 2M… and reuse elsewhere."""
    out = mask.clone()
    for r in rows:
        if every is not None:
            out[r] = False
            out[r, ::max(1, int(every))] = True
        else:
            out[r] = keyframe
            out[r, 0] = True  # step 0 is always a keyframe
    return out


def set_steps(mask: torch.Tensor, steps: list[int], keyframe: bool) -> torch.Tensor:
    """Whole columns: at ``steps`` every block is a keyframe (``keyframe``) or reuses (step 0 stays a keyframe)."""
    out = mask.clone()
    for s in steps:
        if s != 0 or keyframe:
            out[:, s] = keyframe
    return out


REUSE_COLUMNS = ["kind", "skips", "reuse"]


def reuse_frame(policy: Policy) -> pd.DataFrame:
    """Per block: its kind, what a reuse step skips (``feature`` / ``block``) and what it uses (``hold`` or a
    forecast), one row per block in the policy's order."""
    return pd.DataFrame({"kind": policy.kinds or [""] * len(policy.blocks), "skips": list(policy.granularity),
                         "reuse": list(policy.reuse)}, index=list(policy.blocks))


def with_reuse(policy: Policy, frame: pd.DataFrame | None = None, skip_reuse: str | None = None,
               forecast_axis: str | None = None, cache_dtype: str | None = "keep",
               skip_space: str | None = None) -> Policy:
    """A copy of ``policy`` with the edited per-block reuse table (:func:`reuse_frame`) and policy-wide reuse
    settings; ``cache_dtype="keep"`` leaves it as it is (``None`` is the model's dtype)."""
    changes: dict = {}
    if frame is not None:
        gran = [str(g) if g in frdiff.policy.GRANULARITIES else old
                for g, old in zip(frame["skips"].tolist(), policy.granularity, strict=True)]
        modes = [str(m) if m in frdiff.REUSE_MODES else old
                 for m, old in zip(frame["reuse"].tolist(), policy.reuse, strict=True)]
        changes.update(granularity=gran, reuse=modes)
    if skip_reuse is not None:
        changes["skip_reuse"] = skip_reuse
    if forecast_axis is not None:
        changes["forecast_axis"] = forecast_axis
    if skip_space is not None:
        changes["skip_space"] = skip_space
    if cache_dtype != "keep":
        changes["cache_dtype"] = cache_dtype
    out = policy.replaced(**changes)
    if any(getattr(out, k) != getattr(policy, k) for k in changes) and out.provenance.get("made_by") != "builder":
        out.provenance = {"made_by": "builder", "source": policy.provenance}
    return out


def with_mixing(policy: Policy, mixing: Mixing) -> Policy:
    out = copy.deepcopy(policy)
    out.mixing = mixing
    return out


def problems_for(policy: Policy, denoiser) -> list[str]:
    """Every reason ``policy`` cannot run on ``denoiser`` (empty: it can)."""
    return policy.problems(model_blocks=dict(frdiff.find_blocks(denoiser)),
                           fingerprint=frdiff.model_fingerprint(denoiser))


def summary(policy: Policy, savings: dict | None = None) -> dict:
    """Counts a page shows next to a policy: keyframe share, denoiser calls, step kinds, predicted speedup."""
    kinds = policy.step_kinds()
    out = {"steps": policy.steps, "blocks": len(policy.blocks),
           "keyframe_share": float(policy.keyframes.float().mean()) if policy.blocks else 1.0,
           "denoiser_calls": policy.denoiser_calls(), "full_steps": kinds.count("full"),
           "fr_steps": kinds.count("fr"), "skipped_steps": kinds.count("skip")}
    out["reuse"] = policy.reuse_summary()
    known = all(b in savings.get(g, {}) for b, g in zip(policy.blocks, policy.granularity, strict=True)) \
        if savings is not None else False
    if known:  # a policy made for another model has no prediction here (its blocks are not this model's)
        out["predicted_speedup"] = frdiff.predicted_speedup(policy, savings)
        if "cached_numel" in savings:  # the caches of one image's run (its CFG batch)
            out["cache_bytes"] = frdiff.cache_bytes(policy, savings)
    return out


def threshold_from_store(denoiser, store, delta: float, mix: bool = False) -> Policy:
    """Per-block keyframes from a recorded run: a block recomputes once its accumulated adjacent relative L1 (mean
    over the run's samples) exceeds ``delta`` (:func:`frdiff.threshold_policy`)."""
    if store.steps_done != store.manifest["steps"]:
        raise ValueError(f"the run is incomplete ({store.steps_done} of {store.manifest['steps']} steps); "
                         "record it again or pick a complete run")
    curves = {b: torch.from_numpy(np.nan_to_num(store.stats(b)["rel_l1"].astype(np.float64).mean(1), nan=0.0))
              for b in store.blocks}
    return frdiff.threshold_policy(denoiser, curves, store.steps_done, delta,
                                   scheduler=store.manifest["scheduler"]["name"], source=str(store.directory), mix=mix)


# ---- the library ---------------------------------------------------------------------------------------------------
_SAFE = re.compile(r"[^\w.-]+")  # \w: letters and digits of any script, and _


def safe_name(name: str) -> str:
    """A file name from a user's policy name: letters and digits of any script (``café``, ``вариант``), ``.``,
    ``_``, ``-`` (NFC-normalised, so an accent typed as a combining mark stays a letter); anything else (spaces,
    slashes) becomes ``-``; never empty or a path."""
    out = _SAFE.sub("-", unicodedata.normalize("NFC", name).strip()).strip(".-")
    if not out:
        raise ValueError("give the policy a name (letters, digits, '.', '_' or '-')")
    return out[:80]


def save_policy(policy: Policy, root: str | Path, name: str, overwrite: bool = False) -> Path:
    """Save ``policy`` as ``root/<name>.json``; refuses to overwrite unless asked, and a file there that is not a
    policy (notes someone dropped in the folder) always."""
    from workbench.files import is_policy_file

    path = Path(root) / f"{safe_name(name)}.json"
    if path.exists() and not is_policy_file(path):
        raise ValueError(f"{path.name} in the library is not a policy file; pick another name (nothing was saved)")
    if path.exists() and not overwrite:
        raise ValueError(f"a policy named {path.stem!r} is already in the library; pick another name or tick "
                         "'overwrite'")
    return policy.save(path)


def preset_of(policy: Policy) -> str | None:
    """The preset ``policy`` started from, through builder edits (their provenance keeps the source's)."""
    prov = policy.provenance
    return prov.get("preset") or (prov.get("source") or {}).get("preset")


def default_name(policy: Policy) -> str:
    """A library name for ``policy``: its preset (or who made it) and its step count, e.g. ``uniform-20``."""
    return f"{preset_of(policy) or policy.provenance.get('made_by', 'policy')}-{policy.steps}"


def list_policies(root: str | Path) -> list[dict]:
    """One row per library file: name, provenance, model, steps, mixing, keyframe share and stored metrics;
    files that do not load are listed with their problems instead."""
    rows = []
    for path in sorted(Path(root).glob("*.json")):
        try:
            policy = Policy.load(path)
            modified = dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        except (PolicyError, OSError) as exc:
            problems = exc.problems if isinstance(exc, PolicyError) else [f"cannot read it: {exc}"]
            rows.append({"name": path.stem, "path": str(path), "problems": "; ".join(problems)})
            continue
        prov = policy.provenance
        metrics = prov.get("metrics") or {}
        rows.append({
            "name": path.stem, "path": str(path), "made_by": prov.get("made_by", "?"),
            "preset": preset_of(policy),
            "architecture": policy.model.get("architecture"), "scheduler": policy.scheduler, "steps": policy.steps,
            "mixing": policy.mixing.schedule if policy.mixing.enabled else "off",
            "keyframe_share": round(float(policy.keyframes.float().mean()), 3) if policy.blocks else 1.0,
            "denoiser_calls": policy.denoiser_calls(),
            **{k: metrics.get(k) for k in ("psnr", "ssim", "speedup", "predicted_speedup")},
            "modified": modified, "problems": "", "notes": "; ".join(policy.load_notes),
        })
    return rows


def delete_policy(root: str | Path, name: str) -> None:
    """Delete the library file ``root/<name>.json`` — the name as listed (a file dropped into the folder by hand
    may have any name, spaces included), never a path outside the library."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a policy name of the library")
    path = Path(root) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no policy named {name!r} in {root}")
    path.unlink()


def store_metrics(path: str | Path, metrics: dict) -> None:
    """Write measured metrics into a library policy's provenance (``provenance.metrics``): the file must still load
    as a policy, and everything else in it stays as it was (keys this version does not know included — a load and
    save would drop them)."""
    import json

    from workbench.files import write_text

    Policy.load(path)  # refuses a file that no longer is a valid policy, before anything is written
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    keep = ("psnr", "ssim", "speedup", "predicted_speedup", "latency_s", "class_accuracy", "fd_shapes", "n",
            "model", "measured_at_steps")
    provenance = raw.get("provenance") if isinstance(raw.get("provenance"), dict) else {}
    raw["provenance"] = {**provenance,
                         "metrics": {k: metrics[k] for k in keep if k in metrics and metrics[k] is not None}}
    write_text(path, json.dumps(raw, indent=1) + "\n")


def policy_json(policy: Policy) -> str:
    """JSON text for download (the library file format)."""
    return policy.to_json()


def load_upload(data: bytes) -> Policy:
    """An uploaded policy file → validated policy (the one loader, :meth:`frdiff.Policy.from_bytes`);
    :class:`PolicyError` lists every problem, ``load_notes`` what was ignored."""
    return Policy.from_bytes(data)


def lambda_rows(mixing: Mixing, steps: int) -> list[dict]:
    """λ at each step for plotting: ``[{"step", "r", "lambda"}]``."""
    return [{"step": s, "r": s / steps, "lambda": lam} for s, lam in enumerate(mixing.curve(steps))]


def provenance_text(policy: Policy) -> str:
    return json.dumps(policy.provenance, indent=1, default=str)
