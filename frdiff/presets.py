"""Ready-made policies: no reuse, the paper's uniform keyframes, reduced NFE, DeepCache-style and threshold.

Each builder takes the denoiser (for its blocks and fingerprint) and the schedule, and returns a validated
:class:`~frdiff.policy.Policy` whose provenance names the preset and its parameters.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .blocks import find_blocks
from .policy import FORECAST_AXES, REUSE_MODES, SKIP_SPACES, Mixing, Policy, model_ref

PRESETS = ("none", "uniform", "reduced-nfe", "deepcache", "threshold")


def keyframe_pattern(steps: int, interval: int, warmup: int = 0, last: bool = False) -> torch.Tensor:
    """bool ``[steps]``: the first ``warmup`` steps (and step 0), then every ``interval``-th step from there — or,
    with ``last``, every ``interval``-th step counted back from the last step, so that the last step is a keyframe
    (TaylorSeer's schedule: its warm-up, then computed steps that end on the last one)."""
    mask = torch.zeros(steps, dtype=torch.bool)
    mask[:warmup] = True
    step = torch.arange(steps)
    mask |= (step >= warmup) & ((steps - 1 - step if last else step - warmup) % interval == 0)
    mask[0] = True
    return mask


def _whole(value) -> bool:
    """An integer (numpy's too; not a bool, not 2.0): a count of steps."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def uniform_mask(n_blocks: int, steps: int, interval: int, warmup: int = 0, last: bool = False) -> torch.Tensor:
    """Keyframes at steps 0, M, 2M, … for every block (the paper's uniform policy); with ``warmup`` W the first W
    steps are keyframes and the grid starts at step W; with ``last`` the grid is counted back from the last step,
    which is then a keyframe (:func:`keyframe_pattern`; W = 2 with ``last`` at M = 2 is
    TaylorSeer's schedule)."""
    for name, value, low in (("interval", interval, 1), ("warmup", warmup, 0)):
        if not _whole(value):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be ≥ {low}, got {value}")
    return keyframe_pattern(steps, interval, warmup, last).unsqueeze(0).repeat(n_blocks, 1)


def _policy(denoiser: nn.Module, blocks, mask, steps, scheduler, provenance, granularity=None, mixing=None,
            reuse: dict | None = None):
    names, kinds = [b for b, _ in blocks], [k for _, k in blocks]
    if granularity is None:
        granularity = ["block" if k == "generic" else "feature" for k in kinds]
    reuse = reuse or {}
    modes = {"reuse": [reuse["reuse"]] * len(names)} if "reuse" in reuse else {}
    return Policy(blocks=names, keyframes=mask, steps=steps, scheduler=scheduler, granularity=granularity,
                  kinds=kinds, mixing=mixing or Mixing(), model=model_ref(denoiser),
                  provenance={"made_by": "preset", **provenance}, **modes,
                  **{k: v for k, v in reuse.items() if k != "reuse"}).check(model_blocks=dict(blocks))


def reuse_settings(reuse: str = "hold", skip_reuse: str | None = None, forecast_axis: str = "step",
                   cache_dtype: str | None = None, skip_space: str = "output") -> dict:
    """The reuse fields of a preset: every block's mode, ε_key's (the blocks' unless given) and what it is held or
    forecast as, the forecast axis and the cache dtype; only what differs from a version-1 policy is recorded in the
    provenance."""
    out = {"reuse": reuse, "skip_reuse": skip_reuse or reuse, "skip_space": skip_space,
           "forecast_axis": forecast_axis, "cache_dtype": cache_dtype}
    bad = [f"{k} {v!r}" for k, v, ok in (("reuse", reuse, REUSE_MODES), ("skip_reuse", out["skip_reuse"], REUSE_MODES),
                                         ("skip_space", skip_space, SKIP_SPACES),
                                         ("forecast_axis", forecast_axis, FORECAST_AXES)) if v not in ok]
    if bad:
        raise ValueError(f"unknown {', '.join(bad)}; reuse modes: {', '.join(REUSE_MODES)}; skip spaces: "
                         f"{', '.join(SKIP_SPACES)}; forecast axes: {', '.join(FORECAST_AXES)}")
    return out


def make_preset(name: str, denoiser: nn.Module, steps: int, scheduler: str = "ddim", interval: int = 2,
                mix: bool = False, mixing: Mixing | None = None, reuse: str = "hold", skip_reuse: str | None = None,
                forecast_axis: str = "step", cache_dtype: str | None = None, warmup: int = 0,
                last: bool = False, skip_space: str = "output") -> Policy:
    """Build preset ``name`` (one of :data:`PRESETS` except ``threshold``, see :func:`threshold_policy`).

    - ``none``: every block computed at every step; runs exactly as the stock pipeline.
    - ``uniform``: keyframes every ``interval`` steps for all blocks, feature-level reuse (the paper); ``mix`` turns
      on score mixing with the paper's defaults (or ``mixing``).
    - ``reduced-nfe``: keyframes every ``interval`` steps and λ = 0: non-keyframe steps reuse the last denoiser
      output without calling it. For DDIM that is DDIM on the keyframe timesteps (tests check it).
    - ``deepcache``: like DeepCache, the shallowest blocks (UNet: ``down_blocks.0`` and the last up block;
      transformers: the first and last block) are computed at every step and every other block reuses its whole
      output between keyframes every ``interval`` steps.

    ``reuse``: every block's reuse mode (``hold``, ``taylor1``, ``taylor2``); ``skip_reuse``: ε_key's at skipped and
    mixed steps (default: ``reuse``); ``skip_space`` what ε_key is held or forecast as (``output`` or ``data``,
    :mod:`frdiff.prediction`); ``forecast_axis`` and ``cache_dtype`` as in :class:`~frdiff.policy.Policy`.
    ``warmup`` and ``last`` place the keyframes of ``uniform``, ``reduced-nfe`` and ``deepcache`` as in
    :func:`uniform_mask` (the defaults are the paper's grid; provenance names them only when set).
    """
    if not _whole(steps):
        raise ValueError(f"steps must be a whole number, got {steps!r}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    if not isinstance(denoiser, nn.Module):
        raise TypeError(f"make_preset takes the denoiser (frdiff.denoiser_of(pipe)), got {type(denoiser).__name__}")
    blocks = find_blocks(denoiser)
    nb = len(blocks)
    settings = reuse_settings(reuse, skip_reuse, forecast_axis, cache_dtype, skip_space)
    params = {"preset": name, "steps": steps, "scheduler": scheduler,
              **{k: v for k, v in settings.items() if v not in ("hold", "step", "output", None)}}
    placement = {**({"warmup": warmup} if warmup else {}), **({"last_keyframe": True} if last else {})}
    if name == "none":
        return _policy(denoiser, blocks, torch.ones(nb, steps, dtype=torch.bool), steps, scheduler, params,
                       reuse=settings)
    if name == "uniform":
        mixing = mixing or Mixing(enabled=mix)
        params |= {"interval": interval, "mixing": mixing.enabled, **placement}
        return _policy(denoiser, blocks, uniform_mask(nb, steps, interval, warmup, last), steps, scheduler, params,
                       mixing=mixing, reuse=settings)
    if name == "reduced-nfe":
        params |= {"interval": interval, **placement}
        return _policy(denoiser, blocks, uniform_mask(nb, steps, interval, warmup, last), steps, scheduler, params,
                       mixing=Mixing(enabled=True, schedule="constant", value=0.0), reuse=settings)
    if name == "deepcache":
        shallow = shallow_blocks([b for b, _ in blocks])
        mask = uniform_mask(nb, steps, interval, warmup, last)
        for i, (b, _) in enumerate(blocks):
            if b in shallow:
                mask[i] = True
        params |= {"interval": interval, "always_computed": sorted(shallow), **placement}
        return _policy(denoiser, blocks, mask, steps, scheduler, params, granularity=["block"] * nb,
                       reuse=settings)
    if name == "threshold":
        raise ValueError("the threshold preset needs a recorded run: use threshold_policy (CLI: policy from-run)")
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def shallow_blocks(names: list[str]) -> set[str]:
    """The blocks DeepCache keeps computing: the UNet's first down and last up level, else first and last block."""
    ups = sorted({int(n.split(".")[1]) for n in names if n.startswith("up_blocks.") and n.split(".")[1].isdigit()})
    shallow = {n for n in names if n.startswith("down_blocks.0.")}
    if ups:
        shallow |= {n for n in names if n.startswith(f"up_blocks.{ups[-1]}.")}
    if not shallow and names:
        shallow = {names[0], names[-1]}
    return shallow


def threshold_keyframes(rel_l1: torch.Tensor, delta: float) -> torch.Tensor:
    """Keyframe mask ``[blocks, steps]`` from adjacent relative L1 ``[blocks, steps]`` (column 0 unused).

    Per block, a step is a keyframe when the relative change accumulated since the last keyframe, Σ rel-L1 of the
    adjacent steps in between, exceeds ``delta``; step 0 always is. (The loop is over steps only — each step's
    decision depends on the previous keyframe — and runs on all blocks at once.)
    """
    if not delta >= 0:  # NaN too
        raise ValueError(f"threshold must be a number ≥ 0, got {delta}")
    rel = torch.as_tensor(rel_l1, dtype=torch.float64)
    if rel.ndim != 2 or rel.shape[1] < 1:
        raise ValueError(f"rel_l1 must be [blocks, steps] with at least one step, got shape {tuple(rel.shape)}")
    changes = rel[:, 1:]  # column 0 has no previous step (NaN in a recording's statistics)
    if bool(changes.isnan().any()) or bool((changes < 0).any()):
        raise ValueError("rel_l1 must hold relative changes ≥ 0 after step 0; it has NaN or negative values (a "
                         "recording of non-finite features?)")
    rel = torch.nan_to_num(rel, nan=0.0)
    nb, steps = rel.shape
    mask = torch.zeros(nb, steps, dtype=torch.bool)
    mask[:, 0] = True
    acc = torch.zeros(nb, dtype=torch.float64)
    for s in range(1, steps):
        acc += rel[:, s]
        hit = acc > delta
        mask[:, s] = hit
        acc[hit] = 0.0
    return mask


def threshold_policy(denoiser: nn.Module, rel_l1: dict[str, torch.Tensor], steps: int, delta: float,
                     scheduler: str = "ddim", source: str | None = None, mix: bool = False) -> Policy:
    """Per-block keyframes from a recorded run's adjacent relative L1 (``{block: [steps]}``, step 0 ignored).

    Blocks of the model missing from ``rel_l1`` are left out of the policy (always computed).
    """
    blocks = [(b, k) for b, k in find_blocks(denoiser) if b in rel_l1]
    if not blocks:
        raise ValueError("the recorded run shares no block with this model")
    bad = [b for b, _ in blocks if len(rel_l1[b]) != steps]
    if bad:
        raise ValueError(f"recorded curves have {len(rel_l1[bad[0]])} steps, expected {steps} (block {bad[0]})")
    rel = torch.stack([torch.as_tensor(rel_l1[b], dtype=torch.float64) for b, _ in blocks])
    mask = threshold_keyframes(rel, delta)
    params = {"preset": "threshold", "threshold": delta, "steps": steps, "scheduler": scheduler, "source": source,
              "mixing": mix}
    return _policy(denoiser, blocks, mask, steps, scheduler, params, mixing=Mixing(enabled=mix))
