"""What every CLI command shares: seed lists, loading the model a command names, checks of scheduler names, step
counts and output paths, and the error it raises for bad input (:class:`workbench.errors.UserError`: one
``error:`` line, exit code 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.errors import UserError

__all__ = ["UserError", "check_steps", "example_call", "file_out", "folder_out", "load_model", "parse_seeds",
           "scheduler_arg"]


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


def scheduler_arg(text: str) -> str:
    """argparse ``type`` of ``--scheduler``: a known scheduler name (lower case), or a one-line error listing them."""
    from workbench.models.schedulers import scheduler_key

    try:
        return scheduler_key(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_steps(pipe, steps: int, what: str = "--steps") -> None:
    """A :class:`UserError` for a step count the pipeline's scheduler cannot take (below 1, above its training
    timesteps)."""
    from workbench.models.schedulers import check_steps as check

    try:
        check(pipe.scheduler, steps, what)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def folder_out(path: str | None, flag: str = "--out") -> None:
    """Refuse an output folder that is an existing file (before any work is done)."""
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder")


def file_out(path: str | None, flag: str = "--out", example: str = "P.json") -> None:
    """Refuse an output file that is an existing folder (before any work is done, so nothing is left behind)."""
    if path is not None and Path(path).is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name such as {Path(path) / example}")


def load_model(args: argparse.Namespace):
    import torch

    from workbench.models.zoo import load_pipeline

    return load_pipeline(args.model, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def example_call(pipe, n: int = 1):
    """A one-step call of ``pipe`` for discovering its blocks on real inputs."""
    if hasattr(pipe, "class_to_index"):
        return lambda: pipe([0] * n, num_inference_steps=1, output_type="pt")
    return lambda: pipe(prompt=["a photo"] * n, num_inference_steps=1, output_type="latent")
