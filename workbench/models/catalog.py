"""The catalogue of shipped models: names, descriptions, architectures, where their weights lie, and a listing
that reads the weights files' headers — no torch or diffusers import, so that ``frdiff-workbench models`` answers
at once. Building and loading them: :mod:`workbench.models.zoo`."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "star")
IMAGE_SIZE = 32
MODELS_DIR = Path(__file__).resolve().parent  # the weights folders sit beside this module (package data)
CLASSIFIER_NAME = "shape-classifier"


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what was tried and why it failed."""


@dataclass(frozen=True)
class ModelSpec:
    """An embedded model: its name, architecture and the denoiser config it is built from."""

    name: str
    architecture: str  # "unet" or "dit" (class-conditional ShapesPipeline), "sd" (a StableDiffusionPipeline folder)
    description: str
    denoiser_config: dict
    class_tokens: int = 4  # UNet only: tokens per class for cross-attention
    default_guidance_scale: float = 3.0


# Sized for the CPU budget: a 50-step DDIM sample of 4 images with CFG (denoiser batch 8) in ≤ 5 s on 2 cores.
TINY_UNET = ModelSpec(
    name="tiny-unet",
    architecture="unet",
    description="UNet2DConditionModel with SD's block types (ResnetBlock2D, Transformer2DModel with cross-attention); "
    "the class is a 4-token learned sequence.",
    denoiser_config=dict(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 48, 96),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=16,
        norm_num_groups=16,
    ),
)
TINY_DIT = ModelSpec(
    name="tiny-dit",
    architecture="dit",
    description="DiTTransformer2DModel (adaLN-Zero blocks), a miniature DiT-XL/2: patch 2, 6 blocks of width 128.",
    default_guidance_scale=2.0,
    denoiser_config=dict(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        patch_size=2,
        num_layers=6,
        num_attention_heads=4,
        attention_head_dim=32,
        num_embeds_ada_norm=len(CLASSES),
    ),
)
# A text-to-image model of SD's own kind: its configs live in workbench/models/tiny_sd.py (which needs torch); the
# folder is a stock StableDiffusionPipeline (issue 20).
TINY_SD = ModelSpec(
    name="tiny-sd",
    architecture="sd",
    description="StableDiffusionPipeline in miniature: AutoencoderKL (64 px → 4×16×16 latents), CLIPTextModel, "
    "UNet2DConditionModel with SD's block types; prompts like 'a red star at the top left on a blue background'.",
    denoiser_config={},
    default_guidance_scale=7.5,  # StableDiffusionPipeline's own default; nothing in the folder changes it
)
EMBEDDED: dict[str, ModelSpec] = {s.name: s for s in (TINY_UNET, TINY_DIT, TINY_SD)}
CLASS_CONDITIONAL: tuple[str, ...] = tuple(s.name for s in EMBEDDED.values() if s.architecture != "sd")
SCENE_JUDGE_NAME = "scene-judge"


def embedded_path(name: str) -> Path:
    return MODELS_DIR / name


def list_models() -> list[dict]:
    """The embedded models with architecture, parameter count and whether their weights are present."""
    rows = []
    for spec in EMBEDDED.values():
        path = embedded_path(spec.name)
        rows.append(
            dict(
                name=spec.name,
                architecture=spec.architecture,
                description=spec.description,
                parameters=count_parameters(spec.name),
                weights=str(path) if (path / "model_index.json").exists() else None,
            )
        )
    return rows


def count_parameters(name: str) -> int | None:
    """Parameters of an embedded model's trained components (denoiser, class or text encoder, VAE), summed from
    their safetensors headers (the 8-byte header length, then the JSON that lists each tensor's shape); ``None``
    when its weights are missing."""
    folder = embedded_path(name)
    files = [folder / c / f for c in ("unet", "transformer", "class_encoder", "text_encoder", "vae")
             for f in ("diffusion_pytorch_model.safetensors", "model.safetensors")]
    files = [f for f in files if f.exists()]
    return sum(safetensors_parameters(f) for f in files) if files else None


def safetensors_parameters(path: Path) -> int:
    """Number of values in a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
