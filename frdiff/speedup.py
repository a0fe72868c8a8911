"""Predicted speedup and cache memory of a policy from one measured denoiser call, before running it.

A full denoiser call costs 1. A reuse step of block b saves the FLOP share of the part it skips (the resnet's
``conv1``, the attention block, the DiT self-attention, or the whole block at ``block`` granularity), measured with
``torch.utils.flop_counter.FlopCounterMode`` on one real call; a step with λ = 0 costs 0 (no call). Predicted
speedup = steps / Σ step costs: the speedup of the denoising loop when time follows FLOPs. It ignores the work
outside the denoiser (scheduler, VAE decode) and the memory-bound layers FLOPs do not see, which is why runs report
it next to the measured one.

Cache memory (:func:`cache_bytes`): a block that reuses at some step where the denoiser is called keeps its cached
part at its last keyframes — one value for
``hold``, up to 2 / 3 for ``taylor1`` / ``taylor2`` (fewer while it has had fewer keyframes) — and ε_key keeps the
last full steps' outputs likewise when some step reads it. The sizes of the cached parts are measured on the same
call (per sample, scaled to the run's batch), in the policy's cache dtype or the model's.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .blocks import find_blocks, first_tensor, flop_counter
from .policy import ORDERS, Policy
from .reuse import heavy_module_name, split_output


@torch.no_grad()
def measure_savings(denoiser: nn.Module, granularity: str | None, *args, **kwargs) -> dict:
    """FLOP share a reuse step skips, per block, for ``granularity`` ``"feature"`` and ``"block"``.

    Pass one real call's inputs (``args``/``kwargs``). Returns ``{"total_flops": F, "feature": {block: share},
    "block": {block: share}}``; ``granularity`` limits the result to one of the two.
    """
    if granularity not in (None, "feature", "block"):
        raise ValueError(f"granularity must be 'feature', 'block' or None (both), got {granularity!r}")
    blocks = find_blocks(denoiser)
    modules = dict(denoiser.named_modules())
    grans = ("feature", "block") if granularity is None else (granularity,)
    parts = {(g, name): heavy_module_name(name, modules[name], kind, "block" if kind == "generic" else g)
             for g in grans for name, kind in blocks}
    sizes: dict[str, int] = {}  # numel per sample of each skipped part's (main) output: what its cache holds

    def size_hook(name):
        def hook(_m, _a, out):
            value, _ = split_output(out)  # what the part's cache keeps: every tensor of a tuple output
            tensors = [t for t in (value if isinstance(value, tuple) else (value,)) if t is not None]
            if tensors and name not in sizes:
                sizes[name] = sum(t.numel() // max(1, t.shape[0]) for t in tensors)
        return hook

    handles = [modules[part].register_forward_hook(size_hook(part)) for part in set(parts.values())]
    try:
        with flop_counter(depth=None) as counter:
            output = first_tensor(denoiser(*args, **kwargs))
    finally:
        for h in handles:
            h.remove()
    counts = counter.get_flop_counts()
    root = type(denoiser).__name__
    total = sum(counts.get("Global", {}).values()) or 1
    out: dict = {"total_flops": int(total), "batch": int(output.shape[0]), "element_bytes": output.element_size(),
                 "output_numel": output.numel() // output.shape[0], "cached_numel": {}}
    for gran in grans:
        out[gran] = {name: sum(counts.get(f"{root}.{parts[gran, name]}", {}).values()) / total for name, _ in blocks}
        out["cached_numel"][gran] = {name: sizes.get(parts[gran, name], 0) for name, _ in blocks}
    return out


def _check_savings(policy: Policy, savings: dict, table: str | None = None) -> None:
    """A ``ValueError`` naming what ``savings`` lacks for ``policy``: a granularity it was not measured for, or
    blocks of another model (read as 0 they would predict a speedup of 1 silently)."""
    for b, g in zip(policy.blocks, policy.granularity, strict=True):
        shares = (savings.get(table) or {}).get(g) if table else savings.get(g)
        if shares is None:
            raise ValueError(f"the savings were not measured for granularity {g!r} (block {b}); measure both: "
                             f"measure_savings(denoiser, None, ...)")
        if b not in shares:
            raise ValueError(f"the savings have no share for block {b}: measured on another model?")


def cache_bytes(policy: Policy, savings: dict, batch: int | None = None) -> int:
    """Bytes the caches of ``policy`` hold at most during a run of ``batch`` denoiser samples (the CFG batch;
    default: the batch ``savings`` was measured with). See the module docstring; equals the run's
    :attr:`frdiff.RunReport.cache_bytes`."""
    _check_savings(policy, savings, "cached_numel")
    batch = savings["batch"] if batch is None else batch
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f"batch must be a whole number ≥ 1, got {batch!r}")
    elem = getattr(torch, policy.cache_dtype).itemsize if policy.cache_dtype else savings["element_bytes"]
    total = 0
    for i, (name, gran, reusing) in enumerate(zip(policy.blocks, policy.granularity, policy.reusing_blocks(),
                                                  strict=True)):
        if reusing:  # else no hook keeps a cache (frdiff.apply)
            keys = int(policy.keyframes[i].sum())
            total += min(ORDERS[policy.reuse[i]] + 1, keys) * savings["cached_numel"][gran][name]
    if policy.uses_eps_key():
        total += min(ORDERS[policy.skip_reuse] + 1, int(policy.full_steps().sum())) * savings["output_numel"]
    return total * batch * elem


def step_costs(policy: Policy, savings: dict) -> list[float]:
    """Relative cost of each step (1 = a full denoiser call) under ``policy``."""
    _check_savings(policy, savings)
    kinds = policy.step_kinds()
    rows = policy.keyframes.tolist()
    saved = [float(savings[g][b]) for b, g in zip(policy.blocks, policy.granularity, strict=True)]
    # The shares of the blocks reusing at step s, summed in block order in plain Python floats: the same number
    # wherever it is computed (workbench.quickpolicy computes it without torch; a BLAS matrix product may order the
    # sum differently from one machine to the next).
    per_step = [sum(v for v, row in zip(saved, rows, strict=True) if not row[s]) for s in range(policy.steps)]
    return [0.0 if k == "skip" else 1.0 if k == "full" else max(0.0, 1.0 - per_step[s]) for s, k in enumerate(kinds)]


def predicted_speedup(policy: Policy, savings: dict) -> float:
    """steps / Σ step costs (see the module docstring)."""
    total = sum(step_costs(policy, savings))
    return policy.steps / total if total > 0 else float("inf")
