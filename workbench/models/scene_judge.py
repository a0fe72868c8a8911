"""The scene judge: a small CNN trained on the captioned scenes (:mod:`workbench.models.scenes`) and shipped, which
says whether a `tiny-sd` image agrees with its prompt.

It has one head per attribute (shape, colour, position, background); an image *agrees with its prompt* when all
four heads name what the caption names. Two coordinate channels are appended to the image so the pooled features
know where the shape is. Its pooled features give FD-scenes, the Fréchet distance to real scenes of the same
captions (the FID analogue, as FD-shapes is for the class-conditional models).

Training (``python -m workbench train --model scene-judge``, :mod:`workbench.models.train_sd`) renders scenes on the
device each step, and degrades half of them as an autoencoder would (a light blur, a little noise), so that decoded
samples are judged by their content, not by their sharpness.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from workbench.models.scenes import ATTRIBUTE_VALUES, ATTRIBUTES, SCENE_SIZE, make_scenes, parse_caption

JUDGE_NAME = "scene-judge"
REAL_SCENES_SEED = 910_000  # seed of the real scenes FD-scenes compares against; never a training seed
VAL_SEED = 810_000  # held-out scenes for the judge's accuracy
HEAD_SIZES = tuple(len(ATTRIBUTE_VALUES[a]) for a in ATTRIBUTES)


class SceneJudge(ModelMixin, ConfigMixin):
    """Four conv stages (GroupNorm + SiLU) on RGB + x/y coordinate channels, global average pooling to
    ``feature_dim`` features, one linear head per attribute (their logits concatenated)."""

    @register_to_config
    def __init__(self, head_sizes: tuple[int, ...] = HEAD_SIZES, width: int = 32, feature_dim: int = 128):
        super().__init__()
        from workbench.models.classifier import conv_body

        self.body = conv_body(5, width, feature_dim)  # RGB + the two coordinate channels
        self.head = nn.Linear(feature_dim, sum(head_sizes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features [n, feature_dim] of [-1, 1] images [n, 3, 64, 64]."""
        n, _, h, w = images.shape
        ys = torch.linspace(-1, 1, h, device=images.device, dtype=images.dtype)
        xs = torch.linspace(-1, 1, w, device=images.device, dtype=images.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).expand(n, 2, h, w)
        return self.body(torch.cat([images, grid], 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """The concatenated logits as one tensor per attribute."""
        return list(logits.split(list(self.config.head_sizes), dim=1))


def judge_path() -> Path:
    from workbench.models.catalog import MODELS_DIR

    return MODELS_DIR / JUDGE_NAME


@lru_cache(maxsize=2)
def load_scene_judge(device: str = "cpu") -> SceneJudge:
    """The shipped scene judge, in inference mode (cached per device)."""
    from workbench.models.classifier import load_judge

    return load_judge(SceneJudge, judge_path(), JUDGE_NAME, device)


@torch.no_grad()
def _run(model: SceneJudge, images: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    feats, preds = [], []
    for chunk in images.split(batch):
        f = model.features(chunk.to(device=device, dtype=torch.float32))
        feats.append(f.cpu())
        preds.append(torch.stack([p.argmax(1) for p in model.split(model.head(f))], 1).cpu())
    return torch.cat(feats), torch.cat(preds)


def predict(images: torch.Tensor, model: SceneJudge | None = None) -> torch.Tensor:
    """Predicted attribute indices [n, 4] of [-1, 1] 64×64 images."""
    return _run(model or load_scene_judge(), images)[1]


def scene_attributes(prompts: list[str]) -> torch.Tensor | None:
    """The attribute rows [n, 4] the prompts name, or ``None`` if any prompt is not a scene caption."""
    rows = [parse_caption(p) for p in prompts]
    return None if any(r is None for r in rows) else torch.tensor(rows, dtype=torch.long)


def judge_scenes(images: torch.Tensor, prompts: list[str], fd_min_samples: int = 64,
                 model: SceneJudge | None = None) -> dict | None:
    """Prompt adherence of scene images: the share whose four predicted attributes all equal the prompt's, each
    attribute's own agreement, the adherence of the prompts of each shape, and FD-scenes from ``fd_min_samples``
    images on. ``None`` when the prompts are not all scene captions or the images are not 64×64."""
    attrs = scene_attributes(prompts)
    if attrs is None or tuple(images.shape[-2:]) != (SCENE_SIZE, SCENE_SIZE):
        return None
    model = model or load_scene_judge()
    feats, pred = _run(model, images)
    agree = pred == attrs
    every = agree.all(1).float()
    shapes = ATTRIBUTE_VALUES["shape"]
    out = {"prompt_adherence": float(every.mean()),
           "attribute_agreement": {a: float(agree[:, i].float().mean()) for i, a in enumerate(ATTRIBUTES)},
           "adherence_by_shape": {shapes[k]: float(every[attrs[:, 0] == k].mean())
                                  for k in range(len(shapes)) if (attrs[:, 0] == k).any()}}
    if len(prompts) >= fd_min_samples:
        out["fd_scenes"] = fd_scenes(feats, attrs, model)
    return out


@lru_cache(maxsize=16)
def _real_stats(key: tuple[tuple[int, ...], ...], n: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    rows = torch.tensor(key, dtype=torch.long)
    picks = torch.from_numpy(np.random.default_rng(REAL_SCENES_SEED).integers(0, len(rows), size=n))
    real = make_scenes(n, REAL_SCENES_SEED, attributes=rows[picks]).images
    feats = _run(load_scene_judge(), real)[0].double().numpy()
    return feats.mean(0), np.cov(feats, rowvar=False)


def fd_scenes(features: torch.Tensor, attrs: torch.Tensor, model: SceneJudge | None = None) -> float:
    """Fréchet distance between the judge's features of generated scenes and of 2048 real scenes drawn from the
    same captions (lower is better)."""
    from workbench.models.classifier import frechet_distance

    f = features.double().numpy()
    mu_r, cov_r = _real_stats(tuple(sorted(tuple(r) for r in attrs.tolist())))
    return frechet_distance(f.mean(0), np.cov(f, rowvar=False), mu_r, cov_r)
