"""Feature views: a block's channels projected to three colours per step, with one PCA basis for all steps.

Fitting one basis across the whole trajectory keeps colours comparable over time, so a viewer sees features
*change* rather than a re-fitted projection.
"""

from __future__ import annotations

import numpy as np
import torch


def pca_images(maps: np.ndarray, components: int = 3) -> np.ndarray:
    """``[steps, C, H, W]`` (one sample) → ``[steps, H, W, components]`` in [0, 1], one basis for all steps."""
    x = torch.as_tensor(np.asarray(maps), dtype=torch.float64)
    steps, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # every pixel of every step is one observation of C channels
    mean = rows.mean(0, keepdim=True)
    centred = rows - mean
    cov = centred.T @ centred / max(rows.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    basis = vecs[:, -components:].flip(1)
    # Fix each component's sign so that its largest loading is positive: deterministic colours.
    signs = torch.sign(basis[basis.abs().argmax(0), torch.arange(basis.shape[1])])
    proj = centred @ (basis * signs)
    lo, hi = proj.amin(0), proj.amax(0)
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    k = proj.shape[1]
    if k < components:  # fewer channels than components: pad with zeros
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], components - k)], 1)
    return proj.reshape(steps, h, w, components).numpy()
