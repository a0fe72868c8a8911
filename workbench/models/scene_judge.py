"""The scene judge: a small CNN trained on the captioned scenes (:mod:`workbench.models.scenes`) and shipped, which
says whether a `tiny-sd` image agrees with its prompt.

It has one head per attribute (shape, colour, position, background); an image *agrees with its prompt* when all
four heads name what the caption names. Two coordinate channels are appended to the image so the pooled features
know where the shape is. Its pooled features give FD-scenes, the Fréchet distance to real scenes of the same
captions (the FID analogue, as FD-shapes is for the class-conditional models).

Training (``python -m workbench train --model scene-judge``) renders scenes on the device each step, and degrades
half of them as an autoencoder would (a light blur, a little noise), so that decoded samples are judged by their
content, not by their sharpness.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from workbench.models.scenes import ATTRIBUTE_VALUES, ATTRIBUTES, SCENE_SIZE, make_scenes, parse_caption

JUDGE_NAME = "scene-judge"
REAL_SCENES_SEED = 910_000  # seed of the real scenes FD-scenes compares against; never a training seed
VAL_SEED = 810_000  # held-out scenes for the judge's accuracy
HEAD_SIZES = tuple(len(ATTRIBUTE_VALUES[a]) for a in ATTRIBUTES)
NOT_SCENES = "not available for these prompts (the scene judge reads only scene captions, e.g. 'a red star at the " \
             "top left on a blue background', on 64×64 images)"


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


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half the images blurred (σ 0.4-1.2 px) with a little Gaussian noise, as decoded samples look."""
    n, dev = images.shape[0], images.device
    sigma = (0.4 + 0.8 * torch.rand(n, generator=generator, device=dev))[:, None]
    x = torch.arange(-2, 3, device=dev, dtype=images.dtype)[None]
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = k / k.sum(1, keepdim=True)  # [n, 5]
    c = images.shape[1]
    flat = images.reshape(1, n * c, *images.shape[2:])
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    blurred = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), kx, groups=n * c)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"), ky, groups=n * c).reshape_as(images)
    noisy = blurred + 0.03 * torch.randn(images.shape, generator=generator, device=dev)
    pick = torch.rand(n, generator=generator, device=dev)[:, None, None, None] < 0.5
    return torch.where(pick, noisy.clamp(-1, 1), images)


def train_scene_judge(cfg, out_dir: Path, progress=None) -> dict:
    """Train the scene judge (``cfg``: :class:`workbench.models.train.TrainConfig`; lr, steps, batch size, time
    limit, seeds) and save it with its held-out accuracy per attribute to ``out_dir``."""
    from workbench.models.train import _device, _lr_at

    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    model = SceneJudge().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    start, step = time.time(), 0
    for step in range(cfg.steps):
        if cfg.time_limit_min is not None and time.time() - start > cfg.time_limit_min * 60:
            break
        batch = make_scenes(cfg.batch_size, cfg.data_seed * 1_000_000 + step, device=device)
        x = degrade(batch.images, gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16):
            logits = model(x)
        heads = model.split(logits.float())
        loss = sum(F.cross_entropy(h, batch.attributes[:, i]) for i, h in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None and step % 50 == 0:
            progress({"step": step, "loss": float(loss)})
    model.train(False)
    val = make_scenes(2048, VAL_SEED, device=device)
    accuracy = {}
    for name, images in (("clean", val.images), ("degraded", degrade(val.images, gen))):
        pred = _run(model, images)[1]
        agree = pred == val.attributes.cpu()
        accuracy[name] = {"all": float(agree.all(1).float().mean()),
                          **{a: float(agree[:, i].float().mean()) for i, a in enumerate(ATTRIBUTES)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    record = dict(config=asdict(cfg), steps_done=step + 1, train_minutes=(time.time() - start) / 60,
                  validation_accuracy=accuracy, val_seed=VAL_SEED, device=str(device))
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record
