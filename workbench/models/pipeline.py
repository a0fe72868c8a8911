"""The project's class-conditional, pixel-space ``DiffusionPipeline`` for the shipped models.

It is a stock ``diffusers.DiffusionPipeline`` subclass, so ``save_pretrained``/``from_pretrained``, scheduler
swapping (``Scheduler.from_config(pipe.scheduler.config)``), ``set_progress_bar_config`` and step callbacks work as
they do for ``StableDiffusionPipeline`` or ``DiTPipeline``. The sampling loop mirrors those pipelines: the latents
are the image itself (32×32 RGB in [-1, 1]); classifier-free guidance batches ``[unconditional, conditional]`` like
Stable Diffusion, with the null class (index ``num_classes``) as the unconditional input.

Denoisers:
- ``unet`` (``UNet2DConditionModel``): the class goes through ``class_encoder`` (:class:`ClassTokenEncoder`), a
  learned table of short token sequences passed as ``encoder_hidden_states`` -- the role the text encoder plays in SD.
- ``transformer`` (``DiTTransformer2DModel``): the class goes in as ``class_labels`` to adaLN-Zero, as in DiT.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn


class ClassTokenEncoder(ModelMixin, ConfigMixin):
    """Class index → a short sequence of learned tokens, the UNet's cross-attention context.

    num_classes: real classes; index ``num_classes`` is the null class used for classifier-free guidance.
    num_tokens: sequence length (SD uses 77 text tokens; a class needs few).
    dim: token width = the UNet's ``cross_attention_dim``.
    """

    @register_to_config
    def __init__(self, num_classes: int = 6, num_tokens: int = 4, dim: int = 64):
        super().__init__()
        self.embedding = nn.Embedding(num_classes + 1, num_tokens * dim)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, class_labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return self.embedding(class_labels).view(class_labels.shape[0], cfg.num_tokens, cfg.dim)


class ShapesPipeline(DiffusionPipeline):
    """Class-conditional pixel-space sampling with classifier-free guidance, for a UNet or a DiT denoiser."""

    model_cpu_offload_seq = "class_encoder->unet->transformer"
    _optional_components = ["unet", "transformer", "class_encoder"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        scheduler,
        unet=None,
        transformer=None,
        class_encoder: ClassTokenEncoder | None = None,
        class_names: Sequence[str] | None = None,
        default_guidance_scale: float = 3.0,
    ):
        super().__init__()
        if (unet is None) == (transformer is None):
            raise ValueError("ShapesPipeline needs exactly one denoiser: a unet or a transformer")
        if unet is not None and class_encoder is None:
            raise ValueError("a UNet ShapesPipeline needs a class_encoder to turn classes into tokens")
        self.register_modules(unet=unet, transformer=transformer, class_encoder=class_encoder, scheduler=scheduler)
        self.register_to_config(
            class_names=list(class_names) if class_names is not None else None,
            default_guidance_scale=float(default_guidance_scale),
        )

    @property
    def denoiser(self) -> ModelMixin:
        """The network called at every step (``unet`` or ``transformer``)."""
        return self.unet if self.unet is not None else self.transformer

    @property
    def num_classes(self) -> int:
        if self.unet is not None:
            return int(self.class_encoder.config.num_classes)
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def sample_size(self) -> int:
        return int(self.denoiser.config.sample_size)

    def class_to_index(self, label: int | str) -> int:
        """Class name or index → index, with one clear message for anything else."""
        names = self.config.class_names or []
        if isinstance(label, str) and not label.isdigit():
            key = label.strip().lower()
            if key not in names:
                raise ValueError(f"unknown class {label!r}; this model knows {', '.join(names) or 'indices only'}")
            return names.index(key)
        idx = int(label)
        if not 0 <= idx < self.num_classes:
            raise ValueError(f"class index {idx} out of range 0..{self.num_classes - 1}")
        return idx

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        """One denoiser call: predicted noise for ``sample`` at ``timestep`` given ``class_labels``."""
        t = timestep.expand(sample.shape[0]) if timestep.ndim == 0 else timestep
        if self.unet is not None:
            tokens = self.class_encoder(class_labels).to(sample.dtype)
            return self.unet(sample, t, encoder_hidden_states=tokens).sample
        return self.transformer(sample, timestep=t, class_labels=class_labels).sample

    def _extra_step_kwargs(self, generator, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str],
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per entry of ``class_labels``.

        guidance_scale: CFG weight w in ε = ε_u + w·(ε_c − ε_u); ``None`` uses the shipped default, ≤ 1 disables CFG.
        generator: one generator, or one per image (then each image depends only on its own seed).
        output_type: ``"pil"``, ``"np"`` (float [0, 1], NHWC) or ``"pt"`` (float [-1, 1], NCHW).
        callback_on_step_end: called as ``f(pipe, step_index, timestep, {"latents": ...})`` after each step, like
        diffusers' pipelines; it may return a dict to replace the latents.
        """
        labels = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
        if not labels:
            raise ValueError("class_labels is empty")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"callback tensor inputs {bad} not in {self._callback_tensor_inputs}")
        idx = [self.class_to_index(lab) for lab in labels]
        guidance = self.config.default_guidance_scale if guidance_scale is None else float(guidance_scale)
        do_cfg = guidance > 1.0
        device = self._execution_device
        dtype = self.denoiser.dtype
        batch = len(idx)

        cond = torch.tensor(idx, device=device, dtype=torch.long)
        model_labels = torch.cat([torch.full_like(cond, self.null_class), cond]) if do_cfg else cond
        shape = (batch, self.denoiser.config.in_channels, self.sample_size, self.sample_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        else:
            latents = latents.to(device=device, dtype=dtype)

        # The scheduler's timesteps stay on the CPU, as DiTPipeline keeps them: its per-step arithmetic (DDIM indexes
        # alphas_cumprod, a CPU tensor, with the timestep and branches on ``prev_timestep >= 0``) then reads host
        # values. With them on the GPU, as StableDiffusionPipeline puts them, each step would wait for the GPU to
        # finish the denoiser before the host could queue the next step, so the sampler's Python would add to every
        # step's time instead of overlapping the GPU's work. The denoiser gets its timestep from one upload, made
        # before the loop.
        self.scheduler.set_timesteps(num_inference_steps)
        latents = latents * self.scheduler.init_noise_sigma
        extra = self._extra_step_kwargs(generator, eta)
        timesteps = self.scheduler.timesteps
        model_timesteps = timesteps.to(device)
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise_pred = self.denoise(model_input, model_timesteps[i], model_labels)
            noise_pred = noise_pred[:, : latents.shape[1]]  # models that also predict variance
            if do_cfg:
                uncond, cond_pred = noise_pred.chunk(2)
                noise_pred = uncond + guidance * (cond_pred - uncond)
            latents = self.scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
            if callback_on_step_end is not None:
                local = {"latents": latents}
                out = callback_on_step_end(self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs})
                if out:
                    latents = out.pop("latents", latents)

        images = latents.clamp(-1, 1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            result = images
        else:
            arr = ((images.float() + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
            if output_type == "np":
                result = arr
            elif output_type == "pil":
                result = self.numpy_to_pil(arr)
            else:
                raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)

