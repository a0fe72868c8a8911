"""What each image is conditioned on, for every pipeline family the workbench drives.

The shipped models are class-conditional (``ShapesPipeline``: a class index per image); diffusers' text-to-image
pipelines (Stable Diffusion 1.x/2.x, SDXL, PixArt-α/Σ, SD3, Flux) take a prompt per image. Image i of a run gets
seed ``seeds[i]`` and condition ``conditions[i]``; the CLI pairs prompt ``i mod P`` with the i-th seed
(:func:`cycle`). :func:`call_kwargs` turns conditions and the run's options (negative prompt, height, width) into
the pipeline call's arguments, passing only what the pipeline's ``__call__`` accepts, and :func:`images_of` brings
the images of any family to one convention: ``[n, 3, H, W]`` in [-1, 1] on the CPU.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Options:
    """A prompt run's options (``None``: the pipeline's default)."""

    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


def takes_prompts(pipe) -> bool:
    """Whether ``pipe`` is conditioned on text (not one of the shipped class-conditional pipelines)."""
    return not hasattr(pipe, "class_to_index")


def cycle(prompts: list[str], n: int) -> list[str]:
    """Prompt ``i mod len(prompts)`` for image i of ``n``."""
    if not prompts:
        raise ValueError("no prompts given")
    return [prompts[i % len(prompts)] for i in range(n)]


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read prompts from {path}: {exc}") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts (one per line)")
    return prompts


def call_kwargs(pipe, conditions: list, options: Options | None = None) -> dict:
    """Keyword arguments of one ``pipe(...)`` call for ``conditions`` (class indices or prompts)."""
    if not takes_prompts(pipe):
        if options is not None and options.as_dict():
            raise ValueError(f"{', '.join(options.as_dict())} apply to text-to-image pipelines; this model is "
                             f"class-conditional")
        return {"class_labels": [int(c) for c in conditions]}
    accepted = inspect.signature(pipe.__call__).parameters
    kw: dict = {"prompt": [str(c) for c in conditions]}
    opts = options.as_dict() if options is not None else {}
    if "negative_prompt" in opts:
        kw["negative_prompt"] = [opts.pop("negative_prompt")] * len(conditions)
    kw.update(opts)
    # PixArt: its resolution binning rounds sizes to its training buckets, and caption cleaning needs bs4/ftfy
    for flag in ("use_resolution_binning", "clean_caption"):
        if flag in accepted:
            kw[flag] = False
    unknown = [k for k in kw if k not in accepted]
    if unknown:
        raise ValueError(f"{type(pipe).__name__} takes no {', '.join(unknown)}")
    return kw


def images_of(pipe, images: torch.Tensor) -> torch.Tensor:
    """Images from ``pipe(..., output_type="pt")`` as ``[n, 3, H, W]`` in [-1, 1] (diffusers' pipelines give
    [0, 1]; the shipped pipelines give [-1, 1])."""
    images = torch.as_tensor(images).float().cpu()
    return images * 2 - 1 if takes_prompts(pipe) else images
