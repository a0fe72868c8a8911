"""``python -m workbench <command>``: the command-line face of the workbench.

Every command that reports numbers takes ``--json`` and then prints exactly one JSON object on stdout.
Every error prints one ``error:`` line on stderr and exits with 2: input the user can fix (unknown model, bad
class, a folder that holds an earlier run, a damaged store ...) as its message, an unexpected exception (a bug)
with its type and a hint to rerun with ``--debug``, which shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

from workbench.cli import autofr, bench, engine, models, record
from workbench.cli.common import UserError, parse_seeds, quiet_diffusers

__all__ = ["UserError", "build_parser", "main", "parse_seeds"]

LIGHT = ("models", "runs")  # commands that import neither torch nor diffusers
# Commands that import diffusers only on the paths that need it, and quiet it there (`policy make` from a model's
# metadata file, `policy validate` without --model and `policy remap` need no diffusers).
SELF_QUIETED = ("policy",)

# Packages beyond torch + diffusers, and the extra of pyproject.toml that installs each.
OPTIONAL = {"numpy": "cli", "scipy": "cli", "skimage": "cli", "PIL": "cli", "tqdm": "cli", "zarr": "cli",
            "safetensors": "cli", "transformers": "cli", "plotly": "app", "streamlit": "app", "pandas": "app",
            "DeepCache": "bench", "playwright": "bench"}
EXIT_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``error: …``) instead of the usage block; exit code 2 as before."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m workbench", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one line (may come anywhere)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", parser_class=Parser)
    for module in (models, record, bench, engine, autofr):
        module.add_commands(sub)
    return parser


def _strict_json(obj):
    """NaN and ±inf as null, so that the one JSON object on stdout is strict JSON any parser reads."""
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def error_line(exc: BaseException, command: str | None = None) -> str:
    """The one line an exception is reported as (without the ``error:`` prefix)."""
    from workbench.models.catalog import ModelLoadError

    if isinstance(exc, UserError | ModelLoadError):  # before importing the types below (they import torch)
        return " ".join(str(exc).split()) or type(exc).__name__
    from frdiff import PolicyError
    from workbench.record.plan import BudgetError
    from workbench.record.store import StoreError

    if isinstance(exc, PolicyError):
        text = "invalid policy: " + "; ".join(getattr(exc, "problems", None) or [str(exc)])
    elif isinstance(exc, StoreError | BudgetError):
        text = str(exc)
    elif isinstance(exc, ModuleNotFoundError) and OPTIONAL.get((exc.name or "").split(".")[0]):
        extra = OPTIONAL[(exc.name or "").split(".")[0]]
        text = (f"`{command}` needs {exc.name}, which is not installed; install the [{extra}] extra: "
                f"python -m pip install 'frdiff-workbench[{extra}]'")
    elif isinstance(exc, OSError) and exc.filename is not None:  # a file or folder the command could not use
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    else:
        text = f"{type(exc).__name__}: {exc} (an unexpected error; rerun with --debug for the traceback)"
    return " ".join(text.split()) or type(exc).__name__  # one line, whatever the message held


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:cut]  # accepted before or after the command
    argv = [a for i, a in enumerate(argv) if not (i < cut and a == "--debug")]
    args = build_parser().parse_args(argv)
    args.debug = debug
    try:
        if args.command not in LIGHT + SELF_QUIETED:  # a listing needs neither torch nor diffusers: it answers at once
            quiet_diffusers()  # the CLI reports progress itself; keep stderr readable
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one rank of the job
            from workbench.distributed import run_command

            report = run_command(args)
        else:
            report = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"error: {error_line(exc, args.command)}", file=sys.stderr)
        return EXIT_ERROR
    if getattr(args, "json", False):
        print(json.dumps(_strict_json(report), default=str))
    return 0
