"""Choosing a policy from measured forecast errors under a compute budget (``policy from-run --target-compute``).

The reusing blocks of a planned policy share one keyframe pattern — every M-th step after computing the first W
steps, counted from step W or back from the last step (``+L``: the last step computed, as TaylorSeer does) — and each
block either follows it with its own reuse mode (hold, taylor1, taylor2) or is computed at every
step. Keyframes are shared because a block recomputed while the blocks before it reuse caches a value made from
forecast inputs, and a forecast extrapolating from such values drifts: on the shipped tiny-dit, letting every block
pick its own interval from the same error estimates lost 10–25 dB against one shared pattern at equal compute.

Given, per block, pattern and mode, an estimate of the error its reuse steps make
(``workbench.analysis.predictability.option_errors`` on a recorded run) and the FLOP share a reuse step of the block
skips, :func:`plan_candidates` tries every pattern that fits the budget: each block takes its best mode for the pattern,
then blocks are switched to always-computed in the order of the most error avoided per unit of compute while the
compute fraction C = 1 − (1/S)·Σ_b share_b·(reuse steps of b) stays at or under the target; the pattern with the
least total estimated error comes first. :func:`skip_candidates` adds whole-step policies (reduced NFE with a
forecast ε), which the recorded feature maps cannot estimate. ``workbench.plan`` then runs the best few and the
whole-step ones and keeps the best measured one.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .blocks import find_blocks
from .policy import REUSE_MODES, Mixing, Policy, model_ref
from .presets import keyframe_pattern, make_preset

INTERVALS = (1, 2, 3, 4, 5, 6)
WARMUPS = (0, 2, 4)
_PATTERN = re.compile(r"^(?P<kind>[MR])(?P<every>\d+)\+W(?P<warmup>\d+)(?P<last>\+L)?$")


def reuse_pattern(steps: int, every: int, warmup: int = 0) -> torch.Tensor:
    """bool ``[steps]``: every step computed except one in ``every`` after the first ``warmup`` steps (the
    light end of the range: a forecast one step ahead from neighbours one step apart)."""
    mask = torch.ones(steps, dtype=torch.bool)
    start = max(1, warmup)
    mask[start + every - 1::every] = False
    return mask


def patterns(steps: int, intervals=INTERVALS, warmups=WARMUPS, reuse_every=(3, 4, 5)) -> dict[str, torch.Tensor]:
    """Named keyframe patterns: ``"M3+W2"`` computes steps 0–1, then every 3rd step; ``"M3+W2+L"`` likewise but
    with the grid aligned on the last step (computed); ``"R4+W0"`` reuses every 4th step and computes the others.
    Identical masks appear once."""
    out: dict[str, torch.Tensor] = {}
    candidates = [(f"M{m}+W{w}{'+L' if last else ''}", keyframe_pattern(steps, m, w, last)) for m in intervals
                  for w in (warmups if m > 1 else (0,)) for last in (False, True)]
    candidates += [(f"R{r}+W{w}", reuse_pattern(steps, r, w)) for r in reuse_every for w in warmups]
    for name, mask in candidates:
        if not any(torch.equal(mask, other) for other in out.values()):
            out[name] = mask
    return out


def plan_candidates(denoiser: nn.Module, errors: dict[str, dict[tuple[str, str], float]],
                    pats: dict[str, torch.Tensor], savings: dict, steps: int, target: float,
                    granularity: str = "block", scheduler: str = "ddim", provenance: dict | None = None,
                    tol: float = 1e-9) -> list[Policy]:
    """One policy per pattern that fits compute ≤ ``target`` (module docstring), least total estimated error first.
    ``errors[block][(pattern, mode)]``: estimated error; blocks without estimates are left out (always computed);
    ``savings``: :func:`frdiff.measure_savings` output."""
    blocks_kinds = [(b, k) for b, k in find_blocks(denoiser) if b in errors]
    if not blocks_kinds:
        raise ValueError("no block of this model has error estimates")
    names = [b for b, _ in blocks_kinds]
    grans = {b: "block" if k == "generic" else granularity for b, k in blocks_kinds}
    shares = {b: float(savings[grans[b]].get(b, 0.0)) for b in names}
    plans = []
    for p, mask in pats.items():
        reuse_steps = float((~mask).sum())
        if reuse_steps == 0:
            continue
        modes = {}
        for b in names:
            known = [(e, m) for (pat, m), e in errors[b].items() if pat == p and m in REUSE_MODES]
            if known:
                modes[b] = min(known)  # (error, mode)
        saved = {b: shares[b] * reuse_steps / steps for b in modes}  # compute a block's reuse saves
        compute = 1.0 - sum(saved.values())
        if compute > target + tol:
            continue
        chosen: dict[str, str | None] = {b: modes[b][1] if b in modes else None for b in names}
        for b in sorted(modes, key=lambda b: modes[b][0] / max(saved[b], 1e-12), reverse=True):
            if compute + saved[b] <= target + tol and modes[b][0] > 0:
                compute += saved[b]
                chosen[b] = None  # computed at every step
        total = sum(modes[b][0] for b in names if chosen[b] is not None)
        plans.append((total, p, chosen, compute))
    if not plans:
        floor = min(1.0 - sum(shares.values()) * float((~m).sum()) / steps for m in pats.values())
        raise ValueError(f"the target compute {target:g} is below what these patterns can reach ({floor:.3f})")
    out = []
    for total, pattern, chosen, compute in sorted(plans, key=lambda x: x[0]):
        mask = torch.stack([pats[pattern] if chosen[b] is not None else torch.ones(steps, dtype=torch.bool)
                            for b in names])
        prov = {"made_by": "plan", "target_compute": target, "compute_fraction": compute, "pattern": pattern,
                "computed_blocks": [b for b in names if chosen[b] is None], "estimated_error": total,
                **(provenance or {})}
        out.append(Policy(blocks=names, keyframes=mask, steps=steps, scheduler=scheduler,
                          granularity=[grans[b] for b in names], kinds=[k for _, k in blocks_kinds],
                          mixing=Mixing(), reuse=[chosen[b] or "hold" for b in names], model=model_ref(denoiser),
                          provenance=prov).check(model_blocks=dict(blocks_kinds)))
    return out



def skip_candidates(denoiser: nn.Module, pats: dict[str, torch.Tensor], steps: int, target: float,
                    scheduler: str = "ddim", modes=("taylor1", "taylor2"), provenance: dict | None = None,
                    tol: float = 1e-9) -> list[Policy]:
    """Whole-step candidates at compute ≤ ``target``: the denoiser is called only at the keyframes of one keyframe
    pattern (λ = 0 elsewhere, reduced NFE) and ε at the other steps is forecast from the last calls by each of
    ``modes``. The pattern is the densest ``M…`` pattern that fits (its compute is its share of steps); among equally
    dense ones, one whose grid ends on the last step, then the shortest warm-up. The recorded feature maps say
    nothing about ε, so there is no estimate to rank these by: they are run next to the shortlist and measured."""
    fitting = [(int(m.sum()), n) for n, m in pats.items()
               if n.startswith("M") and not m.all() and int(m.sum()) / steps <= target + tol]
    if not fitting:
        return []
    _, name = max(fitting, key=lambda c: (c[0], pattern_kind(c[1])[1], -pattern_kind(c[1])[0]))
    mask = pats[name].unsqueeze(0).repeat(len(find_blocks(denoiser)), 1)
    prov = {"made_by": "plan", "target_compute": target, "compute_fraction": float(pats[name].sum()) / steps,
            "pattern": name, "computed_blocks": [], "estimated_error": None, **(provenance or {})}
    return [make_preset("reduced-nfe", denoiser, steps, scheduler=scheduler, skip_reuse=mode)
            .replaced(keyframes=mask, provenance={**prov, "skip": mode}).check() for mode in modes]


def pattern_kind(pattern: str) -> tuple[int, bool]:
    """The warm-up of a pattern name and whether its grid ends on the last step (``"M3+W2+L"`` → ``(2, True)``)."""
    m = _PATTERN.match(pattern)
    if m is None:
        raise ValueError(f"not a pattern name: {pattern!r}")
    return int(m["warmup"]), m["last"] is not None


def shortlist(ranked: list[Policy], n: int = 3) -> list[Policy]:
    """The candidates worth running: the ``n`` with the least estimated error and, for every kind of pattern —
    warm-up × whether the last step is a keyframe — the first ``n`` lack, the best-ranked one of that kind.
    Computing the first steps in full (as TaylorSeer does) and computing the last step are where the estimate
    misleads most: the estimate weighs every step's error alike, while a forecast's benefit from fresh keyframes
    behind it, and an error at the last step (which no later step corrects), do not show in it."""
    out = list(ranked[: max(1, n)])
    have = {pattern_kind(p.provenance["pattern"]) for p in out}
    for p in ranked[len(out):]:
        kind = pattern_kind(p.provenance["pattern"])
        if kind not in have:
            out.append(p)
            have.add(kind)
    return out
