"""Captioned procedural scenes: the data `tiny-sd` is trained on and judged by.

A scene is a 64×64 RGB image of one shape (the six classes of :mod:`workbench.models.data`) in one of six named
colours, at one of five named positions, on a background of another named colour with a gentle brightness gradient;
its caption says all four, in one fixed grammar::

    a red star at the top left on a blue background

Sizes, rotations and the exact shades are drawn at random (the caption does not name them), so a prompt has many
right images. The grammar is closed (6 · 6 · 5 · 5 = 900 captions, a background never the shape's colour), which is
what lets the scene judge (:mod:`workbench.models.scene_judge`) say whether an image agrees with its prompt.

Generation is vectorised torch over the batch; every random draw comes from one CPU ``torch.Generator`` seeded by
the caller, so ``make_scenes(n, seed)`` is the same on every device.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from workbench.models.catalog import CLASSES
from workbench.models.data import _pick, _shape_fields

SCENE_SIZE = 64
SHAPES: tuple[str, ...] = CLASSES
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.88, 0.12, 0.10),
    "green": (0.12, 0.68, 0.20),
    "blue": (0.12, 0.24, 0.90),
    "yellow": (0.96, 0.86, 0.12),
    "white": (0.95, 0.95, 0.95),
    "black": (0.07, 0.07, 0.07),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
# Centre of each position as a fraction of the image side (x, y), y down.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.50, 0.50),
}
POSITION_NAMES: tuple[str, ...] = tuple(POSITIONS)
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "position", "background")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES, "colour": COLOUR_NAMES, "position": POSITION_NAMES, "background": COLOUR_NAMES,
}
WORDS: tuple[str, ...] = tuple(sorted({w for name in SHAPES + COLOUR_NAMES + POSITION_NAMES for w in name.split()}
                                      | {"a", "at", "the", "on", "background"}))


@dataclass(frozen=True)
class SceneBatch:
    """A batch of scenes: images [n, 3, 64, 64] in [-1, 1] and the index of each attribute per image, [n, 4]
    (columns in :data:`ATTRIBUTES` order)."""

    images: torch.Tensor
    attributes: torch.Tensor

    @property
    def captions(self) -> list[str]:
        return [caption(*row) for row in self.attributes.tolist()]


def caption(shape: int, colour: int, position: int, background: int) -> str:
    """The caption of a scene from its attribute indices."""
    return (f"a {COLOUR_NAMES[colour]} {SHAPES[shape]} at the {POSITION_NAMES[position]} "
            f"on a {COLOUR_NAMES[background]} background")


_CAPTION = re.compile(
    r"^a (?P<colour>\w+) (?P<shape>\w+) at the (?P<position>[a-z ]+?) on a (?P<background>\w+) background$")


def parse_caption(text: str) -> tuple[int, int, int, int] | None:
    """The attribute indices a caption names, or ``None`` if it is not a scene caption (case and extra spaces are
    ignored; the background must differ from the shape's colour)."""
    m = _CAPTION.match(" ".join(str(text).lower().split()))
    if m is None:
        return None
    try:
        idx = (SHAPES.index(m["shape"]), COLOUR_NAMES.index(m["colour"]), POSITION_NAMES.index(m["position"]),
               COLOUR_NAMES.index(m["background"]))
    except ValueError:
        return None
    return None if idx[1] == idx[3] else idx


def random_attributes(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` uniformly drawn attribute rows [n, 4] (the background uniform over the colours other than the
    shape's)."""
    shape = torch.randint(0, len(SHAPES), (n,), generator=generator)
    colour = torch.randint(0, len(COLOUR_NAMES), (n,), generator=generator)
    position = torch.randint(0, len(POSITION_NAMES), (n,), generator=generator)
    offset = torch.randint(1, len(COLOUR_NAMES), (n,), generator=generator)
    background = (colour + offset) % len(COLOUR_NAMES)
    return torch.stack([shape, colour, position, background], 1)


def eval_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` evaluation captions: shape ``i mod 6`` for prompt i (so 300 prompts hold 50 of each shape), the other
    attributes drawn from ``seed``. ``python -m workbench scenes --n 300`` prints them."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    attrs = random_attributes(n, torch.Generator().manual_seed(int(seed)))
    attrs[:, 0] = torch.arange(n) % len(SHAPES)
    return [caption(*row) for row in attrs.tolist()]


def make_scenes(n: int, seed: int, attributes: torch.Tensor | None = None,
                device: str | torch.device = "cpu") -> SceneBatch:
    """Render ``n`` scenes deterministically from ``seed`` (attributes drawn unless given as [n, 4] indices)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    drawn = random_attributes(n, g)
    attrs = drawn if attributes is None else torch.as_tensor(attributes, dtype=torch.long).reshape(n, 4)
    size = SCENE_SIZE
    radius = 10.0 + 4.0 * torch.rand(n, generator=g)  # pixels
    jitter = (torch.rand(n, 2, generator=g) - 0.5) * 6.0
    theta = torch.rand(n, generator=g) * 2 * math.pi
    shade = (torch.rand(n, 3, generator=g) - 0.5) * 0.10
    bg_shade = (torch.rand(n, 3, generator=g) - 0.5) * 0.10
    grad_dir = torch.rand(n, generator=g) * 2 * math.pi
    grad_amp = 0.04 + 0.08 * torch.rand(n, generator=g)

    palette = torch.tensor(list(COLOURS.values()))
    anchors = torch.tensor(list(POSITIONS.values())) * size
    dev = torch.device(device)
    centre = (anchors[attrs[:, 2]] + jitter).to(dev)
    fg = (palette[attrs[:, 1]] + shade).clamp(0, 1).to(dev)
    bg = (palette[attrs[:, 3]] + bg_shade).clamp(0, 1).to(dev)
    radius, theta, grad_dir, grad_amp = (t.to(dev) for t in (radius, theta, grad_dir, grad_amp))
    coords = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    xs, ys = xs[None], ys[None]
    px, py = xs - centre[:, 0, None, None], ys - centre[:, 1, None, None]
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    r = radius[:, None, None]
    u, v = (cos * px + sin * py) / r, (-sin * px + cos * py) / r
    dist_px = _pick(_shape_fields(u, v), attrs[:, 0].to(dev)) * r
    alpha = (0.5 - dist_px).clamp(0.0, 1.0)[:, None]
    t = (xs - size / 2) * torch.cos(grad_dir)[:, None, None] + (ys - size / 2) * torch.sin(grad_dir)[:, None, None]
    light = 1.0 + grad_amp[:, None, None, None] * (t / size)[:, None] * 2
    background = (bg[:, :, None, None] * light).clamp(0, 1)
    image = background * (1 - alpha) + fg[:, :, None, None] * alpha
    return SceneBatch(images=(image * 2 - 1).contiguous(), attributes=attrs.to(dev))
