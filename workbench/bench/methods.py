"""The methods a quality benchmark compares: a stock scheduler at some step count, an FRDiff policy, or a peer
library's cache attached for one pipeline call — and how one is run and its FLOPs counted as executed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

import frdiff
from frdiff import Policy

TRAIN_SEEDS = 1000  # first training seed of Auto-FR, the threshold policies' recorded run and peer calibration


class NotApplicable(RuntimeError):
    """A peer method that cannot run on this model; the message says why."""


@dataclass
class Method:
    """One way to sample: a stock scheduler at ``steps``, an FRDiff ``policy``, or a ``peer`` (a context manager
    factory ``peer(pipe)`` that attaches another library's cache for one pipeline call)."""

    name: str
    family: str  # one line per family in the plots
    frdiff: bool  # counts as an FRDiff variant in the summary
    steps: int
    scheduler: str = "ddim"
    policy: Policy | None = None
    peer: Callable | None = None
    params: dict = field(default_factory=dict)


@contextlib.contextmanager
def attached(pipe, method: Method) -> Iterator:
    """``method`` attached to ``pipe`` for one pipeline call (peers are attached fresh per call: their state is
    per run), holding the pipeline's lock. Yields the :class:`frdiff.FRRun` of a policy, else ``None``."""
    if method.policy is not None:
        with frdiff.apply(pipe, method.policy) as run:
            yield run
    elif method.peer is not None:
        with frdiff.exclusive(pipe), method.peer(pipe):
            yield
    else:
        with frdiff.exclusive(pipe):
            yield


def seed_conditions(pipe, seeds: list[int]) -> list:
    """What image i of a run samples: class ``seed mod classes`` for the class-conditional models; for a
    text-to-image pipeline the scene caption ``eval_prompts(...)[seed]`` (tiny-sd's evaluation prompts, judged by
    the scene judge; any other text-to-image model samples the same captions, unjudged)."""
    from workbench.conditions import takes_prompts

    if not takes_prompts(pipe):
        return [s % pipe.num_classes for s in seeds]
    from workbench.models.scenes import eval_prompts

    captions = eval_prompts(max(seeds) + 1)
    return [captions[s] for s in seeds]


def run_method(pipe, method: Method, labels: list[int], seeds: list[int], batch_size: int = 64):
    """Sample ``method``: ``(SampleResult, denoiser calls per image)``."""
    from workbench.sampling import SampleResult, sample

    calls = [0]  # module calls (a peer that skips blocks still calls the denoiser); policies: the engine's count
    handle = frdiff.denoiser_of(pipe).register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    parts, engine_calls = [], 0
    try:
        for start in range(0, len(seeds), batch_size):
            with attached(pipe, method) as run:
                parts.append(sample(pipe, labels[start:start + batch_size], seeds[start:start + batch_size],
                                    steps=method.steps, scheduler=method.scheduler, batch_size=batch_size))
            if run is not None:
                engine_calls += run.report().denoiser_calls
    finally:
        handle.remove()
    if method.policy is not None:
        calls[0] = engine_calls
    result = SampleResult(torch.cat([p.images for p in parts]), list(labels), list(seeds),
                          sum(p.latency_s for p in parts))
    return result, calls[0] / max(1, len(parts))


def count_flops(pipe, method: Method, labels: list[int], seeds: list[int]) -> float:
    """Denoiser FLOPs per image of a whole sampling run of ``method`` (one batch), counted as executed."""
    from frdiff.blocks import flop_counter
    from workbench.sampling import sample

    with attached(pipe, method), flop_counter() as counter:
        sample(pipe, labels, seeds, steps=method.steps, scheduler=method.scheduler, batch_size=len(seeds))
    return counter.get_total_flops() / len(seeds)


def first_of_each_family(methods: list[Method], k: int, keep_two: tuple[str, ...] = ()) -> list[Method]:
    """The first ``k`` methods of every family (two of the families in ``keep_two``), in order."""
    seen: dict[str, int] = {}
    out = []
    for m in methods:
        seen[m.family] = seen.get(m.family, 0) + 1
        if seen[m.family] <= (max(k, 2) if m.family in keep_two else k):
            out.append(m)
    return out
