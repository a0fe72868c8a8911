"""Benchmarks: commands that produce the numbers quoted in docs/ (never timed tests).

Suites:
- ``foundation``: per shipped model, wall time of a 50-step DDIM sample of 4 images with classifier-free guidance
  (the size budget of the shipped models: ≤ 5 s on the 2-core reference CPU), and the procedural data generator's
  throughput.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

from workbench.data import make_shapes


def machine_info() -> dict:
    """What the numbers were measured on."""
    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                torch=torch.__version__, threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    import diffusers

    info["diffusers"] = diffusers.__version__
    return info


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_foundation(repeats: int = 3, device: str = "cpu") -> dict:
    """Sampling latency of the shipped models (50 DDIM steps, 4 images, CFG) and data generation throughput."""
    from workbench.zoo import EMBEDDED, load_pipeline

    models = {}
    for name in EMBEDDED:
        pipe = load_pipeline(name, device=device)

        def run(pipe=pipe):
            gens = [torch.Generator().manual_seed(i) for i in range(4)]
            return pipe([0, 1, 2, 3], num_inference_steps=50, generator=gens)

        med, times = median_time(run, repeats)
        models[name] = dict(sample_4_images_50_steps_cfg_s=med, runs_s=times,
                            guidance_scale=pipe.config.default_guidance_scale)
    med, times = median_time(lambda: make_shapes(4096, seed=0), repeats)
    return dict(suite="foundation", machine=machine_info(), device=device, models=models,
                data=dict(images=4096, median_s=med, images_per_s=4096 / med))
