"""Image-quality metrics of a variant against the reference run from the same seeds.

PSNR and SSIM come from scikit-image (``skimage.metrics``), computed per image on [0, 1] RGB with
``data_range=1`` and averaged; FD-shapes and class accuracy come from the shipped classifier
(:mod:`workbench.models.classifier`).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _hwc(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW tensor → [0, 1] NHWC float64 array."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).double().numpy()


PSNR_CAP_DB = 100.0  # identical images: PSNR is infinite; capped so means stay finite and comparable


def psnr_per_image(reference: torch.Tensor, images: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of each image against its reference, capped at :data:`PSNR_CAP_DB` (identical images)."""
    ref, img = _hwc(reference), _hwc(images)
    out = np.empty(len(ref))
    for i in range(len(ref)):
        mse = float(np.mean((ref[i] - img[i]) ** 2))
        psnr = PSNR_CAP_DB if mse == 0.0 else peak_signal_noise_ratio(ref[i], img[i], data_range=1.0)
        out[i] = min(PSNR_CAP_DB, psnr)
    return out


def ssim_per_image(reference: torch.Tensor, images: torch.Tensor) -> np.ndarray:
    ref, img = _hwc(reference), _hwc(images)
    win = min(7, ref.shape[1], ref.shape[2])
    win -= 1 - win % 2  # odd window that fits the image
    return np.array([structural_similarity(r, x, data_range=1.0, channel_axis=-1, win_size=win)
                     for r, x in zip(ref, img, strict=True)])


def compare_images(reference: torch.Tensor, images: torch.Tensor) -> dict:
    """``psnr`` and ``ssim`` (means over images) and ``max_abs_diff`` (on the [-1, 1] images)."""
    if reference.shape != images.shape:
        raise ValueError(f"shape mismatch: reference {tuple(reference.shape)}, images {tuple(images.shape)}")
    psnr = psnr_per_image(reference, images)
    return {
        "psnr": float(psnr.mean()),
        "psnr_per_image": psnr.tolist(),
        "ssim": float(ssim_per_image(reference, images).mean()),
        "max_abs_diff": float((reference.float() - images.float()).abs().max()),
    }
