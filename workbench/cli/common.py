"""What every CLI command shares: seed lists, loading the model a command names, checks of scheduler names, step
counts and output paths, and the error it raises for bad input (:class:`workbench.errors.UserError`: one
``error:`` line, exit code 2)."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from workbench.errors import UserError

__all__ = ["MAX_SEED", "MAX_STEPS", "UserError", "add_condition_arguments", "check_steps", "compile_options",
           "conditions_for", "device_arg", "example_call", "file_out", "folder_out", "inductor_option", "load_model",
           "number", "parse_seeds", "prompt_list", "quiet_diffusers", "scheduler_arg"]


MAX_SEEDS = 100_000  # images one command may be asked for (a typo like 0-999999999 is refused, not run out of memory)
MAX_SEED = 2**63 - 1  # torch generators take seeds up to here
MAX_STEPS = 10_000  # as a policy file allows


def number(kind: type = float, low: float | None = None, high: float | None = None, above: bool = False):
    """An argparse ``type`` for a finite number of ``kind`` with ``low ≤ value ≤ high`` (``above``: ``low < value``),
    refused in one line naming the range — NaN and infinities included, which comparisons would let through."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{'an integer' if kind is int else 'a number'} is needed, "
                                             f"got {text!r}") from None
        ok = (kind is int or math.isfinite(value)) and (low is None or (value > low if above else value >= low)) \
            and (high is None or value <= high)
        if not ok:
            shown = (lambda v: str(v)) if kind is int else (lambda v: f"{v:g}")
            bounds = [f"{'>' if above else '≥'} {shown(low)}" if low is not None else "",
                      f"≤ {shown(high)}" if high is not None else ""]
            what = "an integer" if kind is int else "a finite number"
            raise argparse.ArgumentTypeError(" ".join([f"must be {what}", " and ".join(b for b in bounds if b)])
                                             .rstrip() + f", got {text!r}")
        return value

    parse.__name__ = "number"  # argparse names the type in some messages
    return parse


def device_arg(text: str) -> str:
    """An argparse ``type`` for ``--device``: cpu, cuda, cuda:N or mps, and one this machine has (torch is imported
    only for a GPU device, which a command then loads a model onto anyway)."""
    name = text.strip()
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        raise argparse.ArgumentTypeError(f"a device is cpu, cuda, cuda:N or mps, got {text!r}")
    if name == "cpu":
        return name
    import torch

    if name == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("this machine has no MPS device; use --device cpu")
        return name
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{name}: this machine (or this torch, {torch.__version__}) has no CUDA "
                                         f"device; use --device cpu")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


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
            elif part:
                lo_i = hi_i = int(part)
            else:
                continue
            if not 0 <= lo_i <= hi_i <= MAX_SEED:
                raise UserError(f"seeds lie in 0..{MAX_SEED}, got {part!r} in {text!r}")
            if len(seeds) + hi_i - lo_i + 1 > MAX_SEEDS:
                raise UserError(f"{text!r} asks for more than {MAX_SEEDS} images; give fewer seeds")
            seeds.extend(range(lo_i, hi_i + 1))
    except ValueError:
        raise UserError(f"bad seed list {text!r}; use e.g. 0-7 or 1,5,9") from None
    if not seeds:
        raise UserError(f"empty seed list {text!r}")
    return seeds


# The names of workbench.models.schedulers.SCHEDULERS (a test keeps them equal), here so that parsing a command
# line does not import diffusers' schedulers (seconds on the 2-core machine).
SCHEDULER_NAMES = ("ddim", "dpmpp", "euler", "unipc", "ddpm")


def scheduler_arg(text: str) -> str:
    """argparse ``type`` of ``--scheduler``: a known scheduler name (lower case), or a one-line error listing them."""
    key = str(text).strip().lower()
    if key not in SCHEDULER_NAMES:
        raise argparse.ArgumentTypeError(f"unknown scheduler {text!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    return key


def inductor_option(text: str) -> tuple[str, object]:
    """argparse ``type`` of ``--inductor-option``: ``KEY=VALUE``, the value true/false, a number, or text."""
    key, sep, raw = str(text).partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise argparse.ArgumentTypeError(f"an inductor option is KEY=VALUE (e.g. cpp_wrapper=true), got {text!r}")
    raw = raw.strip()
    value: object = {"true": True, "false": False}.get(raw.lower(), raw)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                pass
    return key.strip(), value


def compile_options(args: argparse.Namespace, compile_modes: list[str]) -> dict | None:
    """``--inductor-option``s as :func:`frdiff.apply`'s ``compile_options``, checked (names inductor knows, and a
    compile mode of frdiff's among ``compile_modes`` to use them) before anything loads."""
    options = dict(getattr(args, "inductor_option", None) or [])
    if not options:
        return None
    from frdiff.compiling import check_compile_options

    mode = next((m for m in compile_modes if m in ("regional", "full")), "off")
    if mode == "off":
        raise UserError("--inductor-option tunes inductor's compiled graphs: use it with --compile regional or full")
    try:
        return check_compile_options(mode, "inductor", options)
    except ValueError as exc:
        raise UserError(f"--inductor-option: {exc}") from None


def check_steps(pipe, steps: int, what: str = "--steps") -> None:
    """A :class:`UserError` for a step count the pipeline's scheduler cannot take (below 1, above its training
    timesteps)."""
    from workbench.models.schedulers import check_steps as check

    try:
        check(pipe.scheduler, steps, what)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def folder_out(path: str | None, flag: str = "--out") -> None:
    """Refuse an output folder that is an existing file or cannot be made or written (before any work is done)."""
    from workbench.files import writable_parent

    if path is None:
        return
    if Path(path).exists() and not Path(path).is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder")
    why = writable_parent(Path(path) / "x")
    if why:
        raise UserError(f"{flag} {path} cannot be written: {why}")


def file_out(path: str | None, flag: str = "--out", example: str = "P.json", kind: str | None = None) -> None:
    """Refuse, before any work is done, an output file that is an existing folder, that cannot be written (a file
    where a folder should be, a read-only folder), or — ``kind`` ``"policy"`` — an existing file that is not an
    FRDiff policy (a run's manifest.json, say: a policy command replaces policies, nothing else), or — ``kind``
    ``"image"`` — whose extension is no image format."""
    from workbench.files import image_format, is_policy_file, writable_parent

    if path is None:
        return
    if Path(path).is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name such as {Path(path) / example}")
    why = writable_parent(path)
    if why:
        raise UserError(f"{flag} {path} cannot be written: {why}")
    if kind == "policy" and Path(path).exists() and not is_policy_file(path):
        raise UserError(f"{flag} {path} exists and is not an FRDiff policy file; give another file name (nothing "
                        f"was written)")
    if kind == "image":
        try:
            image_format(path)
        except ValueError as exc:
            raise UserError(f"{flag} {exc}") from None


def quiet_diffusers() -> None:
    """Turn diffusers' own progress bars off (the CLI reports progress itself; keeps stderr readable)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()


def load_model(args: argparse.Namespace):
    import torch

    from workbench.models.zoo import load_pipeline

    return load_pipeline(args.model, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def example_call(pipe, n: int = 1):
    """A one-step call of ``pipe`` for discovering its blocks on real inputs."""
    from workbench.conditions import call_kwargs, takes_prompts

    prompts = takes_prompts(pipe)
    kwargs = call_kwargs(pipe, ["a photo"] * n if prompts else [0] * n)
    return lambda: pipe(**kwargs, num_inference_steps=1, output_type="latent" if prompts else "pt")


def add_condition_arguments(p) -> None:
    """``--prompt`` (repeatable), ``--prompts-file``, ``--negative-prompt``, ``--height``, ``--width``: what a
    text-to-image pipeline is sampled with (class-conditional models take ``--class``)."""
    p.add_argument("--prompt", action="append", default=None,
                   help="text-to-image pipelines: a prompt; repeat it for several (image i gets prompt i mod P)")
    p.add_argument("--prompts-file", default=None, help="text-to-image pipelines: a UTF-8 file, one prompt per line")
    p.add_argument("--negative-prompt", default=None, help="text-to-image pipelines: the negative prompt")
    p.add_argument("--height", type=pixels, default=None,
                   help="text-to-image pipelines: image height in pixels (a multiple of 8, at most 4096)")
    p.add_argument("--width", type=pixels, default=None,
                   help="text-to-image pipelines: image width in pixels (a multiple of 8, at most 4096)")


def pixels(text: str) -> int:
    """An argparse ``type`` for an image side: a multiple of 8 (the VAE's downsampling) from 8 to 4096 (a typo like
    100000 would ask for terabytes)."""
    value = number(int, 8, 4096)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8, got {text!r}")
    return value


def prompt_list(args: argparse.Namespace) -> list[str]:
    """The prompts of ``--prompt`` (in order) and then ``--prompts-file``."""
    from workbench.conditions import read_prompts

    prompts = list(getattr(args, "prompt", None) or [])
    if getattr(args, "prompts_file", None):
        try:
            prompts += read_prompts(args.prompts_file)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    return prompts


def conditions_for(args: argparse.Namespace, pipe, n: int, classes: list[int] | None = None):
    """The ``n`` images' conditions and the run's options: prompts cycled over the images for a text-to-image
    pipeline; for a class-conditional one ``classes`` (``--class all``) or ``--class`` for every image."""
    from workbench.conditions import Options, cycle, takes_prompts

    prompts = prompt_list(args)
    for flag in ("height", "width"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be a positive number of pixels, got {value}")
    options = Options(getattr(args, "negative_prompt", None), getattr(args, "height", None),
                      getattr(args, "width", None))
    if takes_prompts(pipe):
        if not prompts:
            raise UserError("this model is a text-to-image pipeline: give --prompt TEXT (repeatable) or "
                            "--prompts-file FILE")
        return cycle(prompts, n), options
    if prompts or options.as_dict():
        raise UserError("--prompt, --prompts-file, --negative-prompt, --height and --width are for text-to-image "
                        "pipelines; this model is class-conditional: use --class")
    cls = getattr(args, "cls", "all")
    if cls == "all" and classes is not None:
        return classes, None
    try:
        return [pipe.class_to_index(cls)] * n, None
    except ValueError as exc:
        raise UserError(str(exc)) from None
