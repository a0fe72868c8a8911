"""Sampling many images reproducibly (one seed per image) and judging them with the shipped classifier.

``labels`` are the images' conditions: class indices for the shipped class-conditional pipelines, prompts for
text-to-image pipelines (:mod:`workbench.conditions`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from workbench.conditions import Options, call_kwargs, images_of, takes_prompts
from workbench.models.schedulers import scheduler_swapped

NOT_AVAILABLE = ("not available for this model (the shape classifier judges the shipped class-conditional models, "
                 "the scene judge tiny-sd's scene captions)")


@dataclass
class SampleResult:
    images: torch.Tensor  # [n, 3, H, W] in [-1, 1], on the CPU
    labels: list  # class indices or prompts
    seeds: list[int]
    latency_s: float  # wall time of the pipeline calls alone


def sample(
    pipe,
    labels: list[int],
    seeds: list[int],
    steps: int = 50,
    guidance_scale: float | None = None,
    scheduler: str | None = None,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    options: Options | None = None,
) -> SampleResult:
    """Sample ``labels[i]`` (a class or a prompt) from ``seeds[i]`` for every i, in batches; each image depends only
    on its own seed. ``progress(done, total)`` is called after each batch. ``options``: a prompt pipeline's negative
    prompt and size."""
    if len(labels) != len(seeds):
        raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
    with scheduler_swapped(pipe, scheduler):
        return _sample_batches(pipe, labels, seeds, steps, guidance_scale, batch_size, progress, options)


def _sample_batches(pipe, labels, seeds, steps, guidance_scale, batch_size, progress=None,
                    options=None) -> SampleResult:
    device = pipe._execution_device
    out, elapsed = [], 0.0
    for start in range(0, len(labels), batch_size):
        lab = labels[start : start + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        guidance = {} if guidance_scale is None and takes_prompts(pipe) else {"guidance_scale": guidance_scale}
        images = pipe(**call_kwargs(pipe, lab, options), num_inference_steps=steps, generator=gens, output_type="pt",
                      **guidance).images
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed += time.perf_counter() - t0
        out.append(images_of(pipe, images))
        if progress is not None:
            progress(min(start + batch_size, len(labels)), len(labels))
    return SampleResult(torch.cat(out), list(labels), list(seeds), elapsed)


def judge(result: SampleResult, fd_min_samples: int = 64) -> dict:
    """Class accuracy of the samples and, with at least ``fd_min_samples`` of them, FD-shapes.

    Prompts: when every prompt is a scene caption (tiny-sd's grammar) and the images are 64×64, the scene judge
    gives ``prompt_adherence`` (all four attributes right), each attribute's agreement and FD-scenes; the same
    adherence is reported as ``class_accuracy`` (the "class" of a scene is its whole caption), so the tables that
    compare class accuracy compare it. Other prompts: ``class_accuracy`` is ``None`` and ``class_metrics`` says
    why."""
    from workbench.models.classifier import class_accuracy, fd_shapes

    if any(isinstance(c, str) for c in result.labels):
        from workbench.models.scene_judge import judge_scenes

        scenes = judge_scenes(result.images, [str(c) for c in result.labels], fd_min_samples)
        if scenes is None:
            return {"class_accuracy": None, "class_metrics": NOT_AVAILABLE}
        return {"class_accuracy": scenes["prompt_adherence"], "class_metrics": "scene judge: prompt adherence",
                **scenes}
    metrics = {"class_accuracy": class_accuracy(result.images, result.labels)}
    if len(result.labels) >= fd_min_samples:
        metrics["fd_shapes"] = fd_shapes(result.images, result.labels)
    return metrics
