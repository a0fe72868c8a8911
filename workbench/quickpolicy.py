"""``policy make`` without torch or diffusers: a preset policy and its predicted speedup and cache memory, from a
model's metadata (:mod:`workbench.models.meta`) instead of the loaded model (issue 21: the CLI's writing commands
answer within 3 s on the 2-core CPU; importing torch and diffusers alone takes ~5–9 s there).

This is a second implementation, in plain Python, of what :func:`frdiff.make_preset`, :meth:`frdiff.Policy.to_json`
and :mod:`frdiff.speedup` compute for the presets ``policy make`` builds; ``tests/test_quick_policy.py`` checks that
it writes byte for byte the same file and reports the same numbers for every preset, option and shipped model. It
serves valid input only: :func:`make` returns ``None`` for anything it would have to refuse (an unknown preset, an
interval below 1, a step count the scheduler cannot take …), and the caller then takes the slow path, whose error
message is the one users always got.
"""

from __future__ import annotations

import json
from pathlib import Path

# frdiff.policy's and frdiff.presets' values (the tests compare them).
FORMAT, VERSION = "frdiff-policy", 2
PRESETS = ("none", "uniform", "reduced-nfe", "deepcache")  # the ones policy make builds (threshold needs a run)
REUSE_MODES = ("hold", "taylor1", "taylor2")
ORDERS = {"hold": 0, "taylor1": 1, "taylor2": 2}
FORECAST_AXES = ("step", "timestep")
SKIP_SPACES = ("output", "data")
CACHE_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2}  # bytes per element
GRANULARITIES = ("feature", "block")
KINDS = ("resnet", "attention", "dit_block", "transformer_block", "generic")
LAMBDA_EPS = 1e-9
# Mixing(): the paper's linear ramp, off unless enabled; the reduced-NFE preset's constant λ = 0.
CENTER, SLOPE = 0.5, 30.0


def _served(meta: dict, preset, steps, scheduler, interval, reuse, skip_reuse, forecast_axis, cache_dtype,
            granularity, warmup=0, last=False, skip_space="output") -> bool:
    """Whether the input is valid (else the slow path reports why, in its words)."""
    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return (preset in PRESETS and whole(steps) and 1 <= steps <= meta["train_timesteps"]
            and (preset == "none" or whole(interval) and interval >= 1)
            and isinstance(scheduler, str) and bool(scheduler)
            and reuse in REUSE_MODES and (skip_reuse is None or skip_reuse in REUSE_MODES)
            and skip_space in SKIP_SPACES
            and forecast_axis in FORECAST_AXES and (cache_dtype is None or cache_dtype in CACHE_DTYPES)
            and (granularity is None or granularity in GRANULARITIES)
            and whole(warmup) and warmup >= 0 and isinstance(last, bool)
            and all(kind in KINDS for _, kind in meta["blocks"]))


def shallow_blocks(names: list[str]) -> set[str]:
    """:func:`frdiff.presets.shallow_blocks`: the UNet's first down and last up level, else first and last block."""
    ups = sorted({int(n.split(".")[1]) for n in names if n.startswith("up_blocks.") and n.split(".")[1].isdigit()})
    shallow = {n for n in names if n.startswith("down_blocks.0.")}
    if ups:
        shallow |= {n for n in names if n.startswith(f"up_blocks.{ups[-1]}.")}
    if not shallow and names:
        shallow = {names[0], names[-1]}
    return shallow


def make(meta: dict, preset: str, steps: int, scheduler: str = "ddim", interval: int = 2, mix: bool = False,
         reuse: str = "hold", skip_reuse: str | None = None, forecast_axis: str = "step",
         cache_dtype: str | None = None, granularity: str | None = None, warmup: int = 0,
         last: bool = False, skip_space: str = "output") -> dict | None:
    """The policy ``policy make`` writes (as :meth:`frdiff.Policy.to_dict` gives it), or ``None`` when the input
    is not valid. Arguments as :func:`frdiff.make_preset`'s; ``granularity``: the CLI's ``--granularity``."""
    if not _served(meta, preset, steps, scheduler, interval, reuse, skip_reuse, forecast_axis, cache_dtype,
                   granularity, warmup, last, skip_space):
        return None
    names, kinds = [b for b, _ in meta["blocks"]], [k for _, k in meta["blocks"]]
    settings = {"reuse": reuse, "skip_reuse": skip_reuse or reuse, "skip_space": skip_space,
                "forecast_axis": forecast_axis, "cache_dtype": cache_dtype}
    params = {"preset": preset, "steps": steps, "scheduler": scheduler,
              **{k: v for k, v in settings.items() if v not in ("hold", "step", "output", None)}}
    placement = {**({"warmup": warmup} if warmup else {}), **({"last_keyframe": True} if last else {})}
    every = [[True] * steps for _ in names]
    # frdiff.presets.keyframe_pattern: the warm-up, then the grid (counted back from the last step with ``last``)
    grid = [s == 0 or s < warmup or (steps - 1 - s if last else s - warmup) % interval == 0 for s in range(steps)]
    uniform = [list(grid) for _ in names] if preset != "none" else every
    grans = ["block" if k == "generic" else "feature" for k in kinds]
    mixing = {"enabled": False, "schedule": "linear", "center": CENTER, "slope": SLOPE, "value": 0.0}
    if preset == "none":
        mask = every
    elif preset == "uniform":
        mask = uniform
        mixing["enabled"] = mix
        params |= {"interval": interval, "mixing": mix, **placement}
    elif preset == "reduced-nfe":
        mask = uniform
        mixing |= {"enabled": True, "schedule": "constant", "value": 0.0}
        params |= {"interval": interval, **placement}
    else:  # deepcache
        shallow = shallow_blocks(names)
        mask = [every[i] if b in shallow else uniform[i] for i, b in enumerate(names)]
        params |= {"interval": interval, "always_computed": sorted(shallow), **placement}
        grans = ["block"] * len(names)
    if granularity and preset != "deepcache":  # the CLI's --granularity (DeepCache-style policies skip blocks)
        grans = [granularity if k != "generic" else "block" for k in kinds]
    model = meta["model"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"architecture": model["architecture"], "fingerprint": model["fingerprint"]},
        "scheduler": scheduler,
        "steps": steps,
        "blocks": [{"name": b, "kind": kinds[i], "granularity": grans[i], "reuse": settings["reuse"],
                    "keyframes": "".join("1" if v else "0" for v in mask[i])} for i, b in enumerate(names)],
        "mixing": mixing,
        "skip_reuse": settings["skip_reuse"],
        **({"skip_space": skip_space} if skip_space != "output" else {}),
        "forecast_axis": forecast_axis,
        "cache_dtype": cache_dtype,
        "provenance": {"made_by": "preset", **params},
    }


def to_json(policy: dict) -> str:
    """:meth:`frdiff.Policy.to_json`."""
    return json.dumps(policy, indent=1) + "\n"


def save(policy: dict, path: str | Path) -> Path:
    """:meth:`frdiff.Policy.save`: written atomically (a temporary file in the same folder, then ``os.replace``)."""
    from workbench.files import write_text

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the policy a file name, e.g. {path / 'policy.json'}")
    return write_text(path, to_json(policy))


# ---- what Policy derives (frdiff.policy) ------------------------------------------------------------------------
def _mask(policy: dict) -> list[list[bool]]:
    return [[c == "1" for c in b["keyframes"]] for b in policy["blocks"]]


def _lam(mixing: dict, r: float) -> float:
    """:meth:`frdiff.policy.Mixing.lam` for the schedules presets use (linear, constant)."""
    if not mixing["enabled"]:
        return 1.0
    if mixing["schedule"] == "constant":
        return float(mixing["value"])
    v = (mixing["slope"] * (r - mixing["center"]) + 2.0) / 4.0
    return 0.0 if v < LAMBDA_EPS else 1.0 if v > 1 - LAMBDA_EPS else v


def _steps(policy: dict) -> tuple[list[bool], list[float], list[str]]:
    """Per step: full (every block computed), λ, and kind (full | fr | skip)."""
    mask, steps = _mask(policy), policy["steps"]
    full = [all(row[s] for row in mask) for s in range(steps)]
    lams = [1.0 if full[s] else _lam(policy["mixing"], s / steps) for s in range(steps)]
    kinds = ["full" if full[s] else "skip" if lams[s] == 0.0 else "fr" for s in range(steps)]
    return full, lams, kinds


def step_kinds(policy: dict) -> list[str]:
    return _steps(policy)[2]


def denoiser_calls(policy: dict) -> int:
    return sum(k != "skip" for k in step_kinds(policy))


def reusing_blocks(policy: dict) -> list[bool]:
    kinds = step_kinds(policy)
    return [any(not key and kinds[s] == "fr" for s, key in enumerate(row)) for row in _mask(policy)]


def uses_eps_key(policy: dict) -> bool:
    _, lams, kinds = _steps(policy)
    return any(k == "skip" or (k == "fr" and lam < 1.0) for k, lam in zip(kinds, lams, strict=True))


def reuse_summary(policy: dict) -> str:
    counts: dict[str, int] = {}
    for block, reusing in zip(policy["blocks"], reusing_blocks(policy), strict=True):
        if reusing:
            counts[block["reuse"]] = counts.get(block["reuse"], 0) + 1
    text = ", ".join(f"{m} ({n} block{'s' if n > 1 else ''})" for m, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    space = " of x̂₀" if policy.get("skip_space", "output") == "data" else ""
    return (text or "no block reuses") + (f"; ε_key: {policy['skip_reuse']}{space}" if uses_eps_key(policy) else "")


# ---- frdiff.speedup ---------------------------------------------------------------------------------------------
def step_costs(policy: dict, savings: dict) -> list[float]:
    """:func:`frdiff.speedup.step_costs`."""
    kinds = step_kinds(policy)
    saved = [float(savings[b["granularity"]].get(b["name"], 0.0)) for b in policy["blocks"]]
    rows = _mask(policy)
    per_step = [sum(v for v, row in zip(saved, rows, strict=True) if not row[s]) for s in range(policy["steps"])]
    return [0.0 if k == "skip" else 1.0 if k == "full" else max(0.0, 1.0 - per_step[s]) for s, k in enumerate(kinds)]


def predicted_speedup(policy: dict, savings: dict) -> float:
    total = sum(step_costs(policy, savings))
    return policy["steps"] / total if total > 0 else float("inf")


def cache_bytes(policy: dict, savings: dict, batch: int | None = None) -> int:
    """:func:`frdiff.speedup.cache_bytes`."""
    batch = savings["batch"] if batch is None else batch
    elem = CACHE_DTYPES[policy["cache_dtype"]] if policy["cache_dtype"] else savings["element_bytes"]
    full, _, _ = _steps(policy)
    total = 0
    for block, row, reusing in zip(policy["blocks"], _mask(policy), reusing_blocks(policy), strict=True):
        if reusing:
            total += min(ORDERS[block["reuse"]] + 1, sum(row)) * savings["cached_numel"][block["granularity"]][
                block["name"]]
    if uses_eps_key(policy):
        total += min(ORDERS[policy["skip_reuse"]] + 1, sum(full)) * savings["output_numel"]
    return total * batch * elem


def report(policy: dict, savings: dict, images: int = 1) -> dict:
    """What ``policy make`` prints after ``out``: blocks, steps, denoiser calls, the step kinds line, the predicted
    speedup, cache bytes for ``images`` images per pipeline call and the reuse summary."""
    line = "".join({"full": "K", "fr": "r", "skip": "-"}[k] for k in step_kinds(policy))
    return {"blocks": len(policy["blocks"]), "steps": policy["steps"], "denoiser_calls": denoiser_calls(policy),
            "step_kinds": line, "predicted_speedup": predicted_speedup(policy, savings),
            "cache_bytes": cache_bytes(policy, savings, batch=savings["batch"] * images),
            "reuse": reuse_summary(policy)}
