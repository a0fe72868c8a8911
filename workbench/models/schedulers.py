"""Scheduler names used across the workbench, mapped to stock diffusers schedulers.

Each scheduler is built ``from_config`` of the pipeline's own scheduler, so the noise schedule the model was trained
with (betas, timestep spacing) carries over, as diffusers recommends for swapping schedulers.
"""

from __future__ import annotations

import numbers
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
    cls, overrides = SCHEDULERS[scheduler_key(name)]
    return cls.from_config(base_config, **overrides)


def scheduler_key(name: str) -> str:
    """``name`` as a key of :data:`SCHEDULERS` (case and spaces ignored), or a ValueError listing the choices."""
    key = str(name).strip().lower()
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    return key


def train_timesteps(scheduler) -> int:
    """How many timesteps the model was trained with (the most steps a sampling run can take)."""
    return int(dict(scheduler.config).get("num_train_timesteps", 1000))


def check_steps(scheduler, steps: int, what: str = "steps") -> None:
    """Refuse a step count the scheduler cannot sample with: below 1, or above its training timesteps (diffusers
    would raise half-way into the pipeline call)."""
    n = train_timesteps(scheduler)
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{what} must be a whole number of at least 1, got {steps!r}")
    if steps > n:
        raise ValueError(f"{what} {steps} is more than the scheduler's {n} training timesteps; use at most {n}")


def scheduler_name(scheduler) -> str:
    """The workbench name of a scheduler instance, or its class name if it is not one of ours."""
    for key, (cls, _) in SCHEDULERS.items():
        if type(scheduler) is cls:
            return key
    return type(scheduler).__name__


def is_flow_matching(scheduler) -> bool:
    """SD3's and Flux's schedulers (rectified flow): no DDIM/DPM-Solver++ swap applies to them."""
    return type(scheduler).__name__.startswith("FlowMatch")


@contextmanager
def scheduler_swapped(pipe, name: str | None) -> Iterator[None]:
    """Run ``pipe`` with scheduler ``name`` (``None``: keep its own) and always put the original back."""
    original = pipe.scheduler
    if name is not None and is_flow_matching(original):
        if scheduler_name(original) != scheduler_key(name):
            raise ValueError(f"this pipeline samples by flow matching ({type(original).__name__}); the workbench's "
                             f"schedulers ({', '.join(SCHEDULERS)}) are for ε- or v-prediction models: leave "
                             f"--scheduler out to use the pipeline's own")
        name = None
    if name is not None:
        pipe.scheduler = make_scheduler(name, original.config)
    try:
        yield
    finally:
        pipe.scheduler = original
