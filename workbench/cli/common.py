"""What every CLI command shares: seed lists, loading the model a command names, and the error it raises for bad
input (:class:`workbench.errors.UserError`: one ``error:`` line, exit code 2)."""

from __future__ import annotations

import argparse

from workbench.errors import UserError

__all__ = ["UserError", "example_call", "load_model", "parse_seeds"]


def parse_seeds(text: str) -> list[int]:
    """``"0-7"`` → [0..7], ``"1,5,9"`` → [1, 5, 9], ``"3"`` → [3]; combinations like ``"0-3,10"`` work too."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                seeds.extend(range(lo_i, hi_i + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"bad seed list {text!r}; use e.g. 0-7 or 1,5,9") from None
    if not seeds:
        raise UserError(f"empty seed list {text!r}")
    return seeds


def load_model(args: argparse.Namespace):
    import torch

    from workbench.models.zoo import load_pipeline

    return load_pipeline(args.model, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def example_call(pipe, n: int = 1):
    """A one-step call of ``pipe`` for discovering its blocks on real inputs."""
    if hasattr(pipe, "class_to_index"):
        return lambda: pipe([0] * n, num_inference_steps=1, output_type="pt")
    return lambda: pipe(prompt=["a photo"] * n, num_inference_steps=1, output_type="latent")
