"""Scheduler names used across the workbench, mapped to stock diffusers schedulers.

Each scheduler is built ``from_config`` of the pipeline's own scheduler, so the noise schedule the model was trained
with (betas, timestep spacing) carries over, as diffusers recommends for swapping schedulers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
}


def make_scheduler(name: str, base_config):
    """A scheduler of kind ``name`` (``ddim|dpmpp|euler|unipc|ddpm``) sharing ``base_config``'s noise schedule."""
    key = name.strip().lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[key]
    return cls.from_config(base_config, **overrides)


def scheduler_name(scheduler) -> str:
    """The workbench name of a scheduler instance, or its class name if it is not one of ours."""
    for key, (cls, _) in SCHEDULERS.items():
        if type(scheduler) is cls:
            return key
    return type(scheduler).__name__


@contextmanager
def scheduler_swapped(pipe, name: str | None) -> Iterator[None]:
    """Run ``pipe`` with scheduler ``name`` (``None``: keep its own) and always put the original back."""
    original = pipe.scheduler
    if name is not None:
        pipe.scheduler = make_scheduler(name, original.config)
    try:
        yield
    finally:
        pipe.scheduler = original
