"""What a recording will take before it starts: the blocks and their output shapes on the real inputs, the
reduction of each stored map, the store's size on disk and the device memory the recorder holds, and the budgets
that refuse a run which would not fit (:class:`BudgetError`, raised before sampling and before any folder is made)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from frdiff.blocks import capture_denoiser_call, denoiser_of, discover_blocks


class BudgetError(RuntimeError):
    """The run would not fit the disk or memory budget; raised before sampling starts."""


@dataclass(frozen=True)
class Reduction:
    """How much of each block output is stored.

    spatial: pool maps to at most this side (None: full resolution); channels: keep at most this many channels,
    evenly spaced (None: all); float16: store half precision; maps: store maps at all (False: statistics only).
    """

    name: str
    spatial: int | None = None
    channels: int | None = None
    float16: bool = False
    maps: bool = True


REDUCTIONS = {
    "full": Reduction("full"),
    "pool16": Reduction("pool16", spatial=16, float16=True),
    "stats": Reduction("stats", float16=True, maps=False),
}


def as_map(t: torch.Tensor) -> torch.Tensor:
    """Block output → [B, C, H, W] where possible: token sequences on a square grid become maps."""
    if t.ndim == 3:
        n = t.shape[1]
        side = int(round(n**0.5))
        if side * side == n:
            return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
    return t


def reduce_map(t: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Apply a reduction to one block output (on its device)."""
    t = as_map(t.detach())
    if t.ndim == 4:
        if reduction.channels is not None and t.shape[1] > reduction.channels:
            idx = torch.linspace(0, t.shape[1] - 1, reduction.channels, device=t.device).round().long()
            t = t.index_select(1, idx)
        if reduction.spatial is not None and max(t.shape[-2:]) > reduction.spatial:
            t = F.adaptive_avg_pool2d(t.float(), (min(t.shape[-2], reduction.spatial),
                                                   min(t.shape[-1], reduction.spatial)))
    return t.to(torch.float16 if reduction.float16 else torch.float32)


def reduced_shape(shape: tuple[int, ...], reduction: Reduction) -> tuple[int, ...]:
    return tuple(reduce_map(torch.empty(shape, device="meta"), reduction).shape)


@dataclass
class RecordPlan:
    """Everything known before sampling: blocks, shapes, sizes. ``estimate_bytes`` is the store's size on disk
    before compression; ``device_bytes`` the extra device memory the recorder holds during the run."""

    blocks: list[dict]
    steps: int
    batch: int
    images: int
    reduction: Reduction
    estimate_bytes: int
    device_bytes: int
    io_shape: tuple[int, ...]


def plan_recording(pipe, call: Callable[[], object], steps: int, images: int, reduction: Reduction,
                   blocks: list[str] | None = None) -> RecordPlan:
    """Discover blocks on the real inputs of ``call`` and size the store for ``steps`` steps."""
    denoiser = denoiser_of(pipe)
    args, kwargs = capture_denoiser_call(pipe, call)
    infos = discover_blocks(denoiser, *args, **kwargs)
    if blocks:
        known = {b.name for b in infos}
        unknown = [b for b in blocks if b not in known]
        if unknown:
            raise ValueError(f"unknown block(s) {', '.join(unknown)}; see `python -m workbench blocks`")
        wanted = set(blocks)
        infos = [b for b in infos if b.name in wanted]
    sample = args[0] if args else next(iter(kwargs.values()))
    batch = int(sample.shape[0])
    if batch not in (images, 2 * images):
        raise ValueError(f"the denoiser sees a batch of {batch} for {images} images; cannot split CFG halves")
    shapes = [b.output_shape for b in infos]
    io_shape = tuple(sample.shape[1:])
    return RecordPlan(
        blocks=[asdict(b) | {"output_shape": list(b.output_shape)} for b in infos],
        steps=steps, batch=batch, images=images, reduction=reduction,
        estimate_bytes=store_bytes(shapes, batch, images, io_shape, steps, reduction),
        device_bytes=2 * sum(int(np.prod(s)) * 4 for s in shapes),  # previous + current output of every block
        io_shape=io_shape,
    )


def store_bytes(block_shapes: list[tuple[int, ...]], batch: int, images: int, io_shape: tuple[int, ...], steps: int,
                reduction: Reduction) -> int:
    """Uncompressed size of a store: block maps (if kept), denoiser outputs, latents and statistics."""
    elem = 2 if reduction.float16 else 4
    maps = sum(int(np.prod(reduced_shape(tuple(s), reduction))) for s in block_shapes) if reduction.maps else 0
    io = int(np.prod(io_shape))
    per_step = maps * elem + (batch + images) * io * 4 + 2 * len(block_shapes) * batch * 4
    return per_step * steps


def check_budget(plan: RecordPlan, disk_budget: int | None, memory_budget: int | None, free_disk: int) -> None:
    """Refuse a plan that does not fit, saying what would: a smaller reduction (disk) or fewer blocks (memory)."""
    limit = min(x for x in (disk_budget, free_disk) if x is not None)
    problems = []
    if plan.estimate_bytes > limit:
        fits = []
        for name, red in REDUCTIONS.items():
            size = store_bytes([tuple(b["output_shape"]) for b in plan.blocks], plan.batch, plan.images,
                               plan.io_shape, plan.steps, red)
            if red != plan.reduction and size <= limit:
                fits.append(f"--reduce {name} ({_mb(size)})")
        hint = ("would fit: " + ", ".join(fits)) if fits else "no reduction fits: record fewer blocks or steps"
        problems.append(f"the store would take {_mb(plan.estimate_bytes)} but the disk budget is {_mb(limit)}; {hint}")
    if memory_budget is not None and plan.device_bytes > memory_budget:
        problems.append(
            f"recording needs {_mb(plan.device_bytes)} of device memory (each block's previous and current output, "
            f"for the statistics), over the {_mb(memory_budget)} budget; record fewer blocks (--blocks) or images"
        )
    if problems:
        raise BudgetError("; ".join(problems))


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
