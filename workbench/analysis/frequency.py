"""Frequency analysis: radial power spectra of feature maps, predicted x0 and images, and error spectra.

The paper's claim to test (the FRDiff paper): fewer steps keep low-frequency structure and lose
high-frequency detail, feature reuse keeps the detail. An *error spectrum* -- the radial spectrum of
(variant − reference) from the same seed -- shows which frequencies a variant loses.

Spectra use numpy's FFT over the last two axes of whole arrays; radial binning is one matrix product with a
precomputed bin-membership matrix (no loops over pixels or channels). Radius is in cycles per image side,
bin k holds frequencies with round(|f|) = k, from 0 (mean) to the Nyquist radius H/2.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import scipy.fft
import torch


@lru_cache(maxsize=32)
def _bins(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin membership of the half-plane of a real FFT, each column weighted by how many full-plane
    frequencies it stands for (its conjugate twin counts too), so the result equals the full-FFT average."""
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.rfftfreq(w) * w
    radius = np.rint(np.hypot(fy[:, None], fx[None, :])).astype(int).ravel()
    twin = ((fx > 0) & (fx < w / 2)).astype(float)
    weight = np.broadcast_to(1.0 + twin[None, :], (h, fx.size)).ravel()
    nbins = min(h, w) // 2 + 1
    keep = radius < nbins
    member = np.zeros((h * fx.size, nbins), dtype=np.float32)
    member[np.arange(h * fx.size)[keep], radius[keep]] = weight[keep]
    return member, member.sum(0)


def _power(x: np.ndarray) -> np.ndarray:
    """|rfft2|² / (H·W) over the last two axes (float32 stays float32)."""
    x = np.asarray(x)
    x = x.astype(np.float32) if x.dtype != np.float64 else x
    h, w = x.shape[-2:]
    f = scipy.fft.rfft2(x, workers=os.cpu_count() or 1)
    return (f.real**2 + f.imag**2) / (h * w)


def radial_spectrum(x: np.ndarray) -> np.ndarray:
    """Mean power per radial frequency bin over the last two axes: ``[..., H, W]`` → ``[..., H//2 + 1]``."""
    x = np.asarray(x)
    power = _power(x)
    member, counts = _bins(*x.shape[-2:])
    return (power.reshape(*x.shape[:-2], -1) @ member.astype(power.dtype)) / counts


def band_energy(spectrum: np.ndarray, edges: tuple[float, float] = (1 / 3, 2 / 3)) -> dict[str, np.ndarray]:
    """Share of (non-DC) spectral energy in low / mid / high bands; ``edges`` are fractions of the Nyquist radius."""
    s = np.asarray(spectrum)[..., 1:]
    n = s.shape[-1]
    r = np.arange(1, n + 1) / n
    total = s.sum(-1).clip(min=1e-30)
    masks = {"low": r <= edges[0], "mid": (r > edges[0]) & (r <= edges[1]), "high": r > edges[1]}
    return {k: s[..., m].sum(-1) / total for k, m in masks.items()}


def spectra_over_time(maps: np.ndarray) -> np.ndarray:
    """Channel- and sample-averaged radial spectrum per step: ``[steps, batch, C, H, W]`` → ``[steps, bins]``.

    Power is averaged over samples and channels before the radial binning (binning is linear, so this equals the
    mean of the per-map spectra at a fraction of the cost). Uses torch's FFT (~3× faster than scipy's here on the
    2-core reference CPU); float64 input stays float64, anything else is computed in float32.
    """
    x = torch.as_tensor(np.asarray(maps))
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    steps, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    f = torch.view_as_real(torch.fft.rfft2(x))  # [..., H, W//2 + 1, (re, im)], a fresh contiguous tensor
    f = f.reshape(steps, -1, h * (w // 2 + 1), 2)
    power = f.square_().sum((1, 3)) / (f.shape[1] * h * w)  # Σ over samples·channels of re² + im², then mean
    member, counts = _bins(h, w)
    return (power.numpy() @ member.astype(power.numpy().dtype)) / counts


def error_spectrum(variant: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Radial spectrum of (variant − reference), averaged over every axis but the frequency one."""
    diff = np.asarray(variant, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    spec = radial_spectrum(diff)
    return spec.reshape(-1, spec.shape[-1]).mean(0)


def band_errors(spectrum: np.ndarray) -> dict[str, float]:
    """Mean error power in the low (first third of the radial bins, structure) and high (last third, fine detail)
    frequencies of an error spectrum (the Tour's reading and ``bench engine-quality`` use it)."""
    s = np.asarray(spectrum, dtype=float)
    k = max(1, len(s) // 3)
    return {"low": float(s[:k].mean()), "high": float(s[-k:].mean())}


def predicted_x0(latents: np.ndarray, output: np.ndarray, timesteps: list[int], alphas_cumprod: np.ndarray,
                 prediction_type: str = "epsilon") -> np.ndarray:
    """The denoiser's estimate of the clean sample at each step, ``[steps, batch, ...]``.

    ``prediction_type`` as in diffusers' scheduler configs: ``epsilon`` x̂0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t,
    ``v_prediction`` x̂0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v, ``sample`` x̂0 = the output itself. ``latents`` are the denoiser's
    inputs: for Euler-type schedulers the scaled input √ᾱ·x0 + √(1−ᾱ)·ε, which the same formulas invert.
    No clipping (a scheduler with ``clip_sample`` clips its own copy).
    """
    x = np.asarray(latents, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if prediction_type == "sample":
        return out
    a = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(timesteps)]
    a = a.reshape(-1, *([1] * (x.ndim - 1)))
    if prediction_type == "epsilon":
        return (x - np.sqrt(1 - a) * out) / np.sqrt(a)
    if prediction_type == "v_prediction":
        return np.sqrt(a) * x - np.sqrt(1 - a) * out
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")
