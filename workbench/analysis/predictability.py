"""How well a block's feature at one step is predicted from the steps computed before it (issue 18).

FRDiff holds a cached feature constant (``hold``); TaylorSeer-style forecasts extrapolate it from the last computed
values (``taylor1``: a line through the last two, ``taylor2``: a parabola through the last three, the reuse modes of
:mod:`frdiff.policy`). From a recorded run's maps ``[steps, batch, ...]`` these functions measure, per step, the
relative error Σ|p − x_s| / Σ|x_s| of each prediction p:

- :func:`predictability`: of step s from steps s − M, s − 2M, s − 3M (interval M ahead; fewer where they do not exist
  yet, hold with one). Hold at M = 1 is the adjacent-step relative L1 the paper plots.
- :func:`policy_error`: of each reuse step of a keyframe pattern from that block's last keyframes before it — what
  a policy with those keyframes and that mode would reuse, and the estimate :mod:`workbench.analysis.planning`
  chooses policies with.

Pure functions over arrays, vectorised over steps and samples with torch; the extrapolation weights are those of
:func:`frdiff.reuse.extrapolation_weights`, so an analysis and a run forecast the same way.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from frdiff.policy import ORDERS, REUSE_MODES
from frdiff.reuse import extrapolation_weights

INTERVALS = (1, 2, 3, 4)


def _flat(maps) -> torch.Tensor:
    x = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps))
    return x.reshape(x.shape[0], x.shape[1], -1).to(torch.float32)  # [steps, batch, features]


def _errors(x: torch.Tensor, targets: list[int], sources: list[list[int]], positions: list[float],
            memo: dict | None = None) -> np.ndarray:
    """Relative L1 ``[len(targets), batch]`` of predicting ``x[t]`` from ``x[sources[i]]`` (newest first) by the
    polynomial through them, evaluated at ``positions[t]``. ``memo``: errors already computed on the same ``x``,
    keyed by (target, sources) — patterns of a plan share most of their predictions."""
    out = np.full((len(targets), x.shape[1]), np.nan)
    memo = {} if memo is None else memo
    by_sources: dict[tuple[int, ...], list[int]] = {}
    for i, src in enumerate(sources):
        key = (targets[i], tuple(src))
        if key in memo:
            out[i] = memo[key]
        else:
            by_sources.setdefault(tuple(src), []).append(i)
    for src, rows in by_sources.items():  # one batched prediction per distinct source set
        tgt = [targets[i] for i in rows]
        w = torch.tensor([extrapolation_weights([positions[j] for j in src], positions[t]) for t in tgt])
        pred = torch.einsum("tk,kbf->tbf", w, x[list(src)])
        truth = x[tgt]
        err = ((pred - truth).abs().sum(-1) / truth.abs().sum(-1).clamp_min(1e-12)).numpy()
        out[rows] = err
        for i, e in zip(rows, err, strict=True):
            memo[(targets[i], src)] = e
    return out


def predictability(maps, modes=REUSE_MODES, intervals=INTERVALS, positions: list[float] | None = None) -> dict:
    """Relative error of predicting every step from the steps M, 2M, 3M before it, per mode and interval.

    Returns ``{"modes", "intervals", "error": [modes, intervals, steps, batch]}``; NaN where step s < M (nothing
    computed that far back). ``positions``: the forecast axis (default: the step index; the manifest's timesteps
    give the ``timestep`` axis).
    """
    x = _flat(maps)
    steps = x.shape[0]
    pos = [float(s) for s in range(steps)] if positions is None else [float(p) for p in positions]
    out = np.full((len(modes), len(intervals), steps, x.shape[1]), np.nan)
    for a, mode in enumerate(modes):
        k = ORDERS[mode]
        for b, m in enumerate(intervals):
            targets = list(range(m, steps))
            sources = [[s - m * (i + 1) for i in range(k + 1) if s - m * (i + 1) >= 0] for s in targets]
            if targets:
                out[a, b, m:] = _errors(x, targets, sources, pos)
    return {"modes": list(modes), "intervals": list(intervals), "error": out}


def policy_error(maps, keyframes, mode: str, positions: list[float] | None = None, memo: dict | None = None
                 ) -> np.ndarray:
    """Relative error ``[steps, batch]`` of the value a block with these ``keyframes`` (bool ``[steps]``) reuses at
    each step under ``mode`` (0 at its keyframes): the forecast from its last keyframes before the step.
    ``memo``: shared between calls on the same maps (see :func:`_errors`)."""
    x = _flat(maps)
    steps = x.shape[0]
    keys = np.flatnonzero(np.asarray(keyframes, dtype=bool))
    if len(keys) == 0 or keys[0] != 0:
        raise ValueError("step 0 must be a keyframe")
    pos = [float(s) for s in range(steps)] if positions is None else [float(p) for p in positions]
    k = ORDERS[mode]
    out = np.zeros((steps, x.shape[1]))
    targets = [s for s in range(steps) if not keyframes[s]]
    sources = [[int(j) for j in keys[keys < s][::-1][: k + 1]] for s in targets]
    if targets:
        out[targets] = _errors(x, targets, sources, pos, memo)
    return out


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.nanmean`` that gives NaN, without a warning, where a slice holds no number (steps before M)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def store_predictability(store, blocks: list[str] | None = None, modes=REUSE_MODES, intervals=INTERVALS,
                         axis: str = "step") -> dict:
    """:func:`predictability` of every block of a recorded run (its stored maps, the conditional half), averaged
    over samples: ``{"blocks", "modes", "intervals", "timesteps", "axis", "error": [blocks, modes, intervals,
    steps]}``. Needs maps (a ``full`` or ``pool16`` run)."""
    from workbench.analysis.reading import iter_maps

    if not store.has_maps:
        raise ValueError("predictability needs stored feature maps: record with --reduce pool16 or full")
    positions = store.timesteps if axis == "timestep" else None
    names = list(blocks or store.blocks)
    errors = []
    for _name, maps in iter_maps(store, names, cond=True):
        errors.append(_nanmean(predictability(maps, modes, intervals, positions)["error"], axis=-1))
    return {"blocks": names, "modes": list(modes), "intervals": list(intervals), "timesteps": store.timesteps,
            "axis": axis, "error": np.stack(errors) if errors else np.zeros((0, len(modes), len(intervals), 0))}


def summary(result: dict) -> dict:
    """JSON-ready means of :func:`store_predictability`: per block, mode and interval, the mean error over the
    steps that have a prediction (``analyze --json``), and the mode with the lowest error at each interval."""
    err = result["error"]
    out = {"axis": result["axis"], "modes": result["modes"], "intervals": result["intervals"], "blocks": {}}
    means = _nanmean(err, axis=-1) if err.size else err  # [blocks, modes, intervals]
    for i, name in enumerate(result["blocks"]):
        out["blocks"][name] = {
            "mean_error": {mode: {str(m): float(means[i, a, b]) for b, m in enumerate(result["intervals"])}
                           for a, mode in enumerate(result["modes"])},
            "best_mode": {str(m): None if np.isnan(means[i, :, b]).all() else
                          result["modes"][int(np.nanargmin(means[i, :, b]))]
                          for b, m in enumerate(result["intervals"])},
        }
    return out


def option_errors(store, pats: dict, modes=REUSE_MODES, blocks: list[str] | None = None,
                  axis: str = "step") -> dict[str, dict[tuple[str, str], float]]:
    """Per block, the mean :func:`policy_error` (over steps and samples) of every keyframe pattern × reuse mode:
    the estimates :func:`frdiff.planning.plan_policy` chooses from. ``pats``: name → bool ``[steps]``."""
    from workbench.analysis.reading import iter_maps

    if not store.has_maps:
        raise ValueError("planning from a run needs its feature maps: record with --reduce pool16 or full")
    positions = store.timesteps if axis == "timestep" else None
    out: dict[str, dict[tuple[str, str], float]] = {}
    for name, maps in iter_maps(store, list(blocks or store.blocks), cond=True):
        memo: dict = {}
        x = _flat(maps)
        out[name] = {(p, mode): float(policy_error(x, mask.numpy(), mode, positions, memo).mean())
                     for p, mask in pats.items() for mode in modes}
    return out
