"""Auto-FR on the project's :class:`~workbench.models.pipeline.ShapesPipeline`: the sampling task
:func:`frdiff.autofr.learn_policy` needs, built from a pipeline, and small helpers to report a learned policy.

Shared by the CLI (``python -m workbench autofr``), the app's Auto-FR page and the benchmarks. Per-seed starting
noise is drawn exactly as :func:`workbench.sampling.sample` draws it (one CPU generator per image), the class of seed
s is s mod classes, and ``denoise`` is one batched CFG call ``[unconditional, conditional]`` with the pipeline's
guidance — the pipeline's loop, without ``no_grad``.
"""

from __future__ import annotations

import torch

import frdiff

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


def check_prompt_pipeline(pipe) -> None:
    """Auto-FR's prompt task covers Stable Diffusion 1.x/2.x (a UNet conditioned on text embeddings alone); refuse
    other text-to-image families with one line instead of training on a wrong replica of their pipeline."""
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(pipe, "encode_prompt") or unet.config.get("addition_embed_type") is not None:
        raise ValueError(f"Auto-FR trains on the shipped class-conditional models and on Stable Diffusion 1.x/2.x "
                         f"pipelines; {type(pipe).__name__} is not supported yet (SDXL's added conditions, PixArt's, "
                         f"SD3's and Flux's transformers need their own task)")


def sd_task(pipe, prompts: list[str], guidance: float | None = None, negative_prompt: str | None = None):
    """``denoise(x, t, idx) → guided ε`` for a Stable Diffusion 1.x/2.x pipeline: prompt ``idx`` (a row of ``cond``
    indexes ``prompts``), its text embeddings encoded once, the CFG batch uncond-first as the pipeline makes it."""
    check_prompt_pipeline(pipe)
    scale = 7.5 if guidance is None else float(guidance)
    device = pipe._execution_device
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(list(prompts), device, 1, scale > 1.0,
                                          [negative_prompt or ""] * len(prompts) if scale > 1.0 else None)
    unet = pipe.unet

    def denoise(x: torch.Tensor, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if scale <= 1.0:
            return unet(x, t, encoder_hidden_states=cond[idx]).sample
        eps = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond[idx], cond[idx]])).sample
        e_uncond, e_cond = eps.chunk(2)
        return e_uncond + scale * (e_cond - e_uncond)

    return denoise


def sd_samples(pipe, seeds: list[int], n_prompts: int, height: int | None = None, width: int | None = None):
    """Starting latents of ``seeds`` as the Stable Diffusion pipeline draws them (one CPU generator per image) and
    prompt index i mod ``n_prompts`` for image i."""
    from diffusers.utils.torch_utils import randn_tensor

    from frdiff.autofr import Samples

    unet = pipe.unet
    f = pipe.vae_scale_factor
    h, w = (height or unet.config.sample_size * f) // f, (width or unet.config.sample_size * f) // f
    device = pipe._execution_device
    noise = torch.cat([randn_tensor((1, unet.config.in_channels, h, w), device=device, dtype=unet.dtype,
                                    generator=torch.Generator(device="cpu").manual_seed(int(s))) for s in seeds])
    return Samples(noise, torch.tensor([i % n_prompts for i in range(len(seeds))], device=device))


def learn_for_pipeline(pipe, config, steps: int, train_seeds: list[int], val_seeds: list[int] | None = None,
                       guidance: float | None = None, savings: dict | None = None, progress=None, cancel=None,
                       model_name: str | None = None, data_parallel=None, prompts: list[str] | None = None,
                       options=None):
    """:func:`frdiff.autofr.learn_policy` on a ShapesPipeline with DDIM (the pipeline's own scheduler), or, with
    ``prompts`` (cycled over the seeds) and ``options`` (negative prompt, size), on a Stable Diffusion 1.x/2.x
    pipeline with its own scheduler. ``data_parallel``: a :class:`frdiff.autofr.DataParallel` (under torchrun, each
    rank its share of every minibatch); ``train_seeds`` are then all ranks' seeds."""
    from frdiff.autofr import learn_policy
    from workbench.conditions import takes_prompts
    from workbench.models.schedulers import scheduler_name

    if takes_prompts(pipe):
        if not prompts:
            raise ValueError("a text-to-image pipeline needs prompts to train on")
        opts = options.as_dict() if options is not None else {}
        task = sd_task(pipe, prompts, guidance, opts.get("negative_prompt"))

        def make(seeds):
            return sd_samples(pipe, seeds, len(prompts), opts.get("height"), opts.get("width"))

        extra = {"prompts": list(prompts), **opts, "guidance": 7.5 if guidance is None else guidance}
    else:
        task, make = shapes_task(pipe, guidance), (lambda seeds: shapes_samples(pipe, seeds))
        extra = {"guidance": pipe.config.default_guidance_scale if guidance is None else guidance}
    val = make(val_seeds) if val_seeds else None
    extra = {"model": model_name, "train_seeds": seed_ranges(train_seeds), "val_seeds": seed_ranges(val_seeds or []),
             **extra}
    return learn_policy(frdiff.denoiser_of(pipe), task, pipe.scheduler, make(train_seeds), steps, config, val=val,
                        savings=savings, scheduler_name=scheduler_name(pipe.scheduler), progress=progress,
                        cancel=cancel, extra_provenance=extra, data_parallel=data_parallel)


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
