"""Procedural shape images: the data the shipped models are trained and judged on.

Every image is 32×32 RGB: one shape of one of six classes (random colour, size, position and rotation) on a
background with a colour gradient plus a texture (stripes, checks, pixel noise or none). The shapes carry the
low-frequency structure, the textures and anti-aliased edges the high-frequency detail, so both halves of the
spectrum are present -- which matters for FRDiff's claim that feature reuse keeps detail while fewer steps keep
structure (the FRDiff paper).

Generation is vectorised torch over the whole batch; all random draws come from one CPU ``torch.Generator``
seeded by the caller, so ``make_shapes(n, seed)`` is deterministic and identical on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.models.catalog import CLASSES, IMAGE_SIZE  # the data's classes and size (re-exported)

TEXTURES: tuple[str, ...] = ("none", "stripes", "checks", "noise")


@dataclass(frozen=True)
class ShapeBatch:
    """A batch of procedural images.

    images: float tensor [n, 3, 32, 32] in [-1, 1] (the models' pixel space).
    labels: long tensor [n], indices into ``CLASSES``.
    """

    images: torch.Tensor
    labels: torch.Tensor


def class_index(name_or_index: str | int) -> int:
    """Map a class name (``"circle"``) or index (``0`` or ``"0"``) to its index, with a clear error otherwise."""
    if isinstance(name_or_index, int) or (isinstance(name_or_index, str) and name_or_index.isdigit()):
        idx = int(name_or_index)
        if 0 <= idx < len(CLASSES):
            return idx
        raise ValueError(f"class index {idx} out of range 0..{len(CLASSES) - 1}")
    key = str(name_or_index).strip().lower()
    if key in CLASSES:
        return CLASSES.index(key)
    raise ValueError(f"unknown class {name_or_index!r}; choose one of {', '.join(CLASSES)}")


def _pick(fields: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    idx = kind.view(1, -1, 1, 1).expand(1, *fields.shape[1:])
    return fields.gather(0, idx).squeeze(0)


def make_shapes(
    n: int,
    seed: int,
    labels: torch.Tensor | list[int] | None = None,
    device: str | torch.device = "cpu",
) -> ShapeBatch:
    """Render ``n`` images deterministically from ``seed``.

    labels: optional class index per image (default: drawn uniformly). Rendering runs on ``device``; random
    parameters always come from a CPU generator so the result does not depend on the device.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    size = IMAGE_SIZE

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    drawn = torch.randint(0, len(CLASSES), (n,), generator=g)
    if labels is None:
        lab = drawn
    else:
        lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if lab.numel() != n:
            raise ValueError(f"got {lab.numel()} labels for {n} images")
        if lab.min() < 0 or lab.max() >= len(CLASSES):
            raise ValueError(f"labels must lie in 0..{len(CLASSES) - 1}")
    radius = 7.0 + 5.0 * rand(n)  # pixels
    centre = radius[:, None] + 1.0 + rand(n, 2) * (size - 2 * radius[:, None] - 2.0)
    theta = rand(n) * 2 * math.pi
    fg = rand(n, 3)
    bg1, bg2 = rand(n, 3), rand(n, 3)
    # Keep the shape visible: push background colours away from the foreground colour where they are close.
    for bg in (bg1, bg2):
        close = (bg - fg).abs().mean(1, keepdim=True) < 0.3
        bg.copy_(torch.where(close, torch.remainder(fg + 0.5, 1.0), bg))
    grad_dir = rand(n) * 2 * math.pi
    texture = torch.randint(0, len(TEXTURES), (n,), generator=g)
    tex_amp = 0.06 + 0.12 * rand(n)
    tex_freq = 3.0 + 5.0 * rand(n)  # periods across the image
    tex_angle = rand(n) * math.pi
    tex_phase = rand(n) * 2 * math.pi
    pixel_noise = torch.randn(n, size, size, generator=g)

    dev = torch.device(device)
    to = lambda t: t.to(dev)  # noqa: E731
    lab_d, radius, centre, theta = to(lab), to(radius), to(centre), to(theta)
    fg, bg1, bg2, grad_dir = to(fg), to(bg1), to(bg2), to(grad_dir)
    texture, tex_amp, tex_freq, tex_angle, tex_phase = map(to, (texture, tex_amp, tex_freq, tex_angle, tex_phase))
    pixel_noise = to(pixel_noise)

    coords = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")  # [H, W]
    xs, ys = xs[None], ys[None]
    px = xs - centre[:, 0, None, None]
    py = ys - centre[:, 1, None, None]
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    r = radius[:, None, None]
    u = (cos * px + sin * py) / r
    v = (-sin * px + cos * py) / r
    dist_px = _pick(_shape_fields(u, v), lab_d) * r
    alpha = (0.5 - dist_px).clamp(0.0, 1.0)[:, None]  # anti-aliased coverage, [n,1,H,W]

    t = (xs - size / 2) * torch.cos(grad_dir)[:, None, None] + (ys - size / 2) * torch.sin(grad_dir)[:, None, None]
    t = (t / size + 0.5).clamp(0.0, 1.0)[:, None]
    background = bg1[:, :, None, None] * (1 - t) + bg2[:, :, None, None] * t

    w = 2 * math.pi * tex_freq[:, None, None] / size
    along = xs * torch.cos(tex_angle)[:, None, None] + ys * torch.sin(tex_angle)[:, None, None]
    stripes = torch.sin(w * along + tex_phase[:, None, None])
    checks = torch.sign(torch.sin(w * xs + tex_phase[:, None, None]) * torch.sin(w * ys))
    patterns = torch.stack([torch.zeros_like(stripes), stripes, checks, pixel_noise.clamp(-2, 2) / 2])
    pattern = _pick(patterns, texture)
    background = background + tex_amp[:, None, None, None] * pattern[:, None]

    image = background * (1 - alpha) + fg[:, :, None, None] * alpha
    image = image.clamp(0.0, 1.0) * 2 - 1
    return ShapeBatch(images=image.contiguous(), labels=lab_d)


def _shape_fields(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The six unit-shape fields stacked, [6, n, H, W] (negative inside, in units of the radius)."""
    rho = torch.sqrt(u * u + v * v)
    phi = torch.atan2(v, u)
    circle = rho - 1.0
    square = torch.maximum(u.abs(), v.abs()) - 0.8
    # Equilateral triangle with circumradius 1: intersection of three half-planes at its inradius 0.5.
    angles = [math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
    triangle = torch.stack([u * math.cos(a) + v * math.sin(a) for a in angles]).amax(0) - 0.5
    ring = (rho - 0.72).abs() - 0.26
    arm, half = 0.3, 0.95
    cross = torch.minimum(
        torch.maximum(u.abs() - half, v.abs() - arm), torch.maximum(u.abs() - arm, v.abs() - half)
    )
    # Five-pointed star: its radius is a triangle wave of the angle, 0.45 in the valleys, 1.0 at the tips.
    wave = torch.remainder(phi * 5 / (2 * math.pi), 1.0)
    star = rho - (0.45 + 0.55 * (2 * (wave - 0.5).abs()))
    return torch.stack([circle, square, triangle, ring, cross, star])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images [n,3,H,W] → uint8 [n,H,W,3] on the CPU, for saving and metrics."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
