"""Auto-FR on the project's :class:`~workbench.models.pipeline.ShapesPipeline`: the sampling task
:func:`frdiff.autofr.learn_policy` needs, built from a pipeline, and small helpers to report a learned policy.

Shared by the CLI (``python -m workbench autofr``), the app's Auto-FR page and the benchmarks. Per-seed starting
noise is drawn exactly as :func:`workbench.sampling.sample` draws it (one CPU generator per image), the class of seed
s is s mod classes, and ``denoise`` is one batched CFG call ``[unconditional, conditional]`` with the pipeline's
guidance — the pipeline's loop, without ``no_grad``.
"""

from __future__ import annotations

import torch

BASELINES = [("uniform", m, mix) for m in (2, 3, 4) for mix in (False, True)] + [("reduced-nfe", m, False)
                                                                                 for m in (2, 3, 4)]


def shapes_task(pipe, guidance: float | None = None):
    """``denoise(x, t, labels) → guided ε`` for a :class:`ShapesPipeline` (one denoiser call, CFG batched)."""
    scale = pipe.config.default_guidance_scale if guidance is None else float(guidance)
    channels = pipe.denoiser.config.in_channels

    def denoise(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if scale <= 1.0:
            return pipe.denoise(x, t, labels)[:, :channels]
        null = torch.full_like(labels, pipe.null_class)
        eps = pipe.denoise(torch.cat([x, x]), t, torch.cat([null, labels]))[:, :channels]
        uncond, cond = eps.chunk(2)
        return uncond + scale * (cond - uncond)

    return denoise


def shapes_samples(pipe, seeds: list[int]):
    """Noise and labels of ``seeds`` (label = seed mod classes), as :func:`workbench.sampling.sample` draws them."""
    from diffusers.utils.torch_utils import randn_tensor

    from frdiff.autofr import Samples

    den = pipe.denoiser
    shape = (1, den.config.in_channels, pipe.sample_size, pipe.sample_size)
    device = pipe._execution_device
    noise = torch.cat([randn_tensor(shape, generator=torch.Generator(device="cpu").manual_seed(int(s)), device=device,
                                    dtype=den.dtype) for s in seeds])
    labels = torch.tensor([int(s) % pipe.num_classes for s in seeds], device=device, dtype=torch.long)
    return Samples(noise, labels)


def learn_for_pipeline(pipe, config, steps: int, train_seeds: list[int], val_seeds: list[int] | None = None,
                       guidance: float | None = None, savings: dict | None = None, progress=None, cancel=None,
                       model_name: str | None = None, data_parallel=None):
    """:func:`frdiff.autofr.learn_policy` on a ShapesPipeline with DDIM (the pipeline's own scheduler).
    ``data_parallel``: a :class:`frdiff.autofr.DataParallel` (under torchrun, each rank its share of every
    minibatch); ``train_seeds`` are then all ranks' seeds."""
    from frdiff.autofr import learn_policy
    from workbench.models.schedulers import scheduler_name

    val = shapes_samples(pipe, val_seeds) if val_seeds else None
    extra = {"model": model_name, "train_seeds": seed_ranges(train_seeds), "val_seeds": seed_ranges(val_seeds or []),
             "guidance": pipe.config.default_guidance_scale if guidance is None else guidance}
    return learn_policy(pipe.denoiser, shapes_task(pipe, guidance), pipe.scheduler, shapes_samples(pipe, train_seeds),
                        steps, config, val=val, savings=savings, scheduler_name=scheduler_name(pipe.scheduler),
                        progress=progress, cancel=cancel, extra_provenance=extra, data_parallel=data_parallel)


def seed_ranges(seeds: list[int]) -> str:
    """[0, 1, 2, 5] → "0-2,5" (the CLI's seed syntax)."""
    out, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        out.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(out)


def mask_lines(policy) -> dict:
    """Readable mask, one character per step: 'K' every block computed, '.' every block reusing, a digit d = at
    least d tenths of the blocks computed; and the keyframe count of each block."""
    frac = policy.keyframes.float().mean(0).tolist()
    line = "".join("K" if f == 1.0 else "." if f == 0.0 else str(min(9, int(f * 10))) for f in frac)
    return {"step_mask": line, "keyframes_per_block": policy.keyframes.sum(1).tolist()}
