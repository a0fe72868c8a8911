"""``python -m workbench <command>``: the command-line face of the workbench.

Every command that reports numbers takes ``--json`` and then prints exactly one JSON object on stdout.
Errors the user can fix (unknown model, bad class, missing weights) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from workbench.cli import autofr, bench, engine, models, record
from workbench.cli.common import UserError, parse_seeds

__all__ = ["UserError", "build_parser", "main", "parse_seeds"]

# Packages beyond torch + diffusers, and the extra of pyproject.toml that installs each.
OPTIONAL = {"numpy": "cli", "scipy": "cli", "skimage": "cli", "PIL": "cli", "tqdm": "cli", "zarr": "cli",
            "safetensors": "cli", "plotly": "app", "streamlit": "app", "DeepCache": "bench", "playwright": "bench"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for module in (models, record, bench, engine, autofr):
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    from workbench.models.zoo import ModelLoadError

    diffusers_logging.disable_progress_bar()  # the CLI reports progress itself; keep stderr readable

    from workbench.distributed import launched, run_command

    try:
        report = run_command(args) if launched() else args.func(args)  # under torchrun: one rank of the job
    except (UserError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        extra = OPTIONAL.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: `{args.command}` needs {exc.name}, which is not installed; install the [{extra}] extra: "
              f"python -m pip install 'frdiff-workbench[{extra}]'", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(report, default=str))
    return 0
