"""Predicted speedup of a policy from measured FLOPs, before running it.

A full denoiser call costs 1. A reuse step of block b saves the FLOP share of the part it skips (the resnet's
``conv1``, the attention block, the DiT self-attention, or the whole block at ``block`` granularity), measured with
``torch.utils.flop_counter.FlopCounterMode`` on one real call; a step with λ = 0 costs 0 (no call). Predicted
speedup = steps / Σ step costs: the speedup of the denoising loop when time follows FLOPs. It ignores the work
outside the denoiser (scheduler, VAE decode) and the memory-bound layers FLOPs do not see, which is why runs report
it next to the measured one.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import find_blocks, flop_counter
from .policy import Policy
from .reuse import heavy_module_name


@torch.no_grad()
def measure_savings(denoiser: nn.Module, granularity: str | None, *args, **kwargs) -> dict:
    """FLOP share a reuse step skips, per block, for ``granularity`` ``"feature"`` and ``"block"``.

    Pass one real call's inputs (``args``/``kwargs``). Returns ``{"total_flops": F, "feature": {block: share},
    "block": {block: share}}``; ``granularity`` limits the result to one of the two.
    """
    blocks = find_blocks(denoiser)
    modules = dict(denoiser.named_modules())
    with flop_counter(depth=None) as counter:
        denoiser(*args, **kwargs)
    counts = counter.get_flop_counts()
    root = type(denoiser).__name__
    total = sum(counts.get("Global", {}).values()) or 1
    out: dict = {"total_flops": int(total)}
    for gran in ("feature", "block") if granularity is None else (granularity,):
        shares = {}
        for name, kind in blocks:
            g = "block" if kind == "generic" else gran
            part = heavy_module_name(name, modules[name], kind, g)
            shares[name] = sum(counts.get(f"{root}.{part}", {}).values()) / total
        out[gran] = shares
    return out


def step_costs(policy: Policy, savings: dict) -> list[float]:
    """Relative cost of each step (1 = a full denoiser call) under ``policy``."""
    kinds = policy.step_kinds()
    mask = policy.keyframes
    saved = torch.tensor([savings[g].get(b, 0.0) for b, g in zip(policy.blocks, policy.granularity, strict=True)],
                         dtype=torch.float64)
    per_step = (~mask).double().T @ saved if policy.blocks else torch.zeros(policy.steps, dtype=torch.float64)
    return [0.0 if k == "skip" else 1.0 if k == "full" else max(0.0, 1.0 - float(per_step[s]))
            for s, k in enumerate(kinds)]


def predicted_speedup(policy: Policy, savings: dict) -> float:
    """steps / Σ step costs (see the module docstring)."""
    total = sum(step_costs(policy, savings))
    return policy.steps / total if total > 0 else float("inf")
