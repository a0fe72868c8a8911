import numpy as np
import scipy.linalg
import torch

from workbench.models.classifier import class_accuracy, fd_shapes, feature_stats, frechet_distance, load_classifier
from workbench.models.data import make_shapes


def test_classifier_accuracy_on_heldout_images():
    batch = make_shapes(600, seed=123_456)  # not a training seed (those are data_seed·10⁶ + step)
    assert class_accuracy(batch.images, batch.labels) >= 0.98


def test_frechet_distance_against_plain_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 8)), rng.normal(loc=0.3, scale=1.5, size=(500, 8))
    mu1, c1, mu2, c2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert abs(frechet_distance(mu1, c1, mu2, c2) - expected) < 1e-8
    assert abs(frechet_distance(mu1, c1, mu1, c1)) < 1e-6
    # Diagonal Gaussians have a closed form: Σ (μ1−μ2)² + (σ1 − σ2)².
    d = frechet_distance(np.zeros(3), np.diag([1.0, 4.0, 9.0]), np.ones(3), np.diag([4.0, 4.0, 1.0]))
    assert abs(d - (3 + 1 + 0 + 4)) < 1e-9


def test_fd_shapes_orders_real_above_noise():
    real = make_shapes(256, seed=424_242)
    noise = torch.rand(256, 3, 32, 32) * 2 - 1
    fd_real = fd_shapes(real.images, real.labels)
    fd_noise = fd_shapes(noise, real.labels)
    assert fd_real < 1.0 < fd_noise
    mu, cov = feature_stats(real.images[:64], load_classifier())
    assert mu.shape == (128,) and cov.shape == (128, 128)
