"""A small shape classifier, trained on the procedural data and shipped: the project's quality judge.

It gives (a) the class accuracy of generated samples and (b) FD-shapes, the Fréchet distance between Gaussian
fits of its penultimate features for generated and real images -- the FID analogue used across the project, since
Inception weights cannot be downloaded here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from workbench.models.data import CLASSES, make_shapes

REAL_STATS_SEED = 900_000  # seed of the real images FD-shapes compares against; never used for training


def conv_body(in_channels: int, width: int, feature_dim: int) -> nn.Sequential:
    """The judges' body: four stages of two 3×3 convolutions with GroupNorm (8 groups) and SiLU (widths ``width``,
    2·``width``, 4·``width``, ``feature_dim``), average pooling between them, global average pooling at the end."""

    def stage(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
        )

    return nn.Sequential(
        stage(in_channels, width), nn.AvgPool2d(2),
        stage(width, width * 2), nn.AvgPool2d(2),
        stage(width * 2, width * 4), nn.AvgPool2d(2),
        stage(width * 4, feature_dim),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


class ShapeClassifier(ModelMixin, ConfigMixin):
    """Four conv stages (GroupNorm + SiLU), global average pooling to ``feature_dim`` features, a linear head."""

    @register_to_config
    def __init__(self, num_classes: int = len(CLASSES), width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.body = conv_body(3, width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [n, feature_dim] of [-1, 1] images [n, 3, 32, 32]."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def classifier_path() -> Path:
    from workbench.models.zoo import CLASSIFIER_NAME, MODELS_DIR

    return MODELS_DIR / CLASSIFIER_NAME


def load_judge(cls, path: Path, name: str, device: str):
    """A shipped judge (``cls``, a ``ModelMixin``) from its folder, checked and in inference mode; one
    :class:`ModelLoadError` that says how to train it when its weights are missing."""
    from workbench.models.zoo import ModelLoadError, _check_safetensors

    weights = path / "diffusion_pytorch_model.safetensors"
    if not weights.exists():
        raise ModelLoadError(f"the {name.replace('-', ' ')} has no weights at {path}; "
                             f"train it with `python -m workbench train --model {name}`")
    _check_safetensors(weights)
    model = cls.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False)
    return model.to(device).train(False)  # inference mode


@lru_cache(maxsize=2)
def load_classifier(device: str = "cpu") -> ShapeClassifier:
    """The shipped classifier, in eval mode (cached per device)."""
    return load_judge(ShapeClassifier, classifier_path(), "shape-classifier", device)


@torch.no_grad()
def _run(model: ShapeClassifier, images: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    feats, logits = [], []
    for chunk in images.split(batch):
        f = model.features(chunk.to(device=device, dtype=torch.float32))
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(feats), torch.cat(logits)


def classify(images: torch.Tensor, model: ShapeClassifier | None = None) -> torch.Tensor:
    """Predicted class index per [-1, 1] image."""
    model = model or load_classifier()
    return _run(model, images)[1].argmax(1).cpu()


def class_accuracy(
    images: torch.Tensor, labels: torch.Tensor | list[int], model: ShapeClassifier | None = None
) -> float:
    """Fraction of images the classifier assigns to their intended class."""
    pred = classify(images, model)
    return float((pred == torch.as_tensor(labels).cpu()).float().mean())


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), the Fréchet distance between two Gaussians (Heusel et al., 2017)."""
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as the FID reference code does
        eps = np.eye(cov1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def feature_stats(images: torch.Tensor, model: ShapeClassifier | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of classifier features."""
    feats = _run(model or load_classifier(), images)[0].double().cpu().numpy()
    return feats.mean(0), np.cov(feats, rowvar=False)


@lru_cache(maxsize=16)
def real_stats(labels_key: tuple[int, ...], n: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of ``n`` real images whose class mix matches ``labels_key`` (a sorted class histogram)."""
    counts = np.bincount(np.asarray(labels_key), minlength=len(CLASSES)).astype(float)
    probs = counts / counts.sum()
    labels = torch.from_numpy(np.random.default_rng(REAL_STATS_SEED).choice(len(CLASSES), size=n, p=probs))
    real = make_shapes(n, REAL_STATS_SEED, labels=labels).images
    return feature_stats(real)


def fd_shapes(images: torch.Tensor, labels: torch.Tensor | list[int], model: ShapeClassifier | None = None) -> float:
    """FD-shapes of generated images against real images of the same class mix (FID analogue; lower is better)."""
    mu, cov = feature_stats(images, model)
    key = tuple(sorted(int(x) for x in torch.as_tensor(labels).tolist()))
    mu_r, cov_r = real_stats(key)
    return frechet_distance(mu, cov, mu_r, cov_r)

