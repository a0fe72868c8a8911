"""``python -m workbench <command>``: the command-line face of the workbench.

Every command that reports numbers takes ``--json`` and then prints exactly one JSON object on stdout.
Errors the user can fix (unknown model, bad class, missing weights) print one line on stderr and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.data import CLASSES


class UserError(Exception):
    """An error caused by the command's input: reported as one line, no traceback."""


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


def cmd_models(args: argparse.Namespace) -> dict:
    from workbench.zoo import list_models

    rows = list_models()
    if not args.json:
        for r in rows:
            status = "weights present" if r["weights"] else "NO WEIGHTS"
            print(f"{r['name']:<10} {r['architecture']:<5} {r['parameters'] / 1e6:6.2f} M params  {status}")
            print(f"           {r['description']}")
    return {"models": rows}


def cmd_sample(args: argparse.Namespace) -> dict:
    import torch

    from workbench.sampling import judge, sample
    from workbench.train import _save_grid
    from workbench.zoo import load_pipeline

    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    pipe = load_pipeline(args.model, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.cls == "all":
        labels = [i % pipe.num_classes for i in range(args.n)]
    else:
        try:
            labels = [pipe.class_to_index(args.cls)] * args.n
        except ValueError as exc:
            raise UserError(str(exc)) from None
    seeds = list(range(args.seed, args.seed + args.n))
    result = sample(pipe, labels, seeds, steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler)
    report = dict(model=args.model, cls=args.cls, n=args.n, steps=args.steps, seed=args.seed,
                  scheduler=args.scheduler or "ddim",
                  guidance_scale=args.guidance if args.guidance is not None else pipe.config.default_guidance_scale,
                  latency_s=result.latency_s, latency_per_image_s=result.latency_s / args.n)
    report.update(judge(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _save_grid(result.images, out, rows=max(1, int(args.n**0.5)))
        report["out"] = str(out)
    if not args.json:
        for k, v in report.items():
            print(f"{k}: {v}")
    return report


def cmd_train(args: argparse.Namespace) -> dict:
    from workbench.train import TrainConfig, train_classifier, train_diffusion

    cfg = TrainConfig(model=args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
                      seed=args.seed, data_seed=args.data_seed, sample_every=args.sample_every,
                      time_limit_min=args.time_limit_min, device=args.device,
                      init_from=args.init_from, bf16=not args.fp32)
    out = Path(args.out)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, desc=f"train {args.model}", unit="step", file=sys.stderr)

    def show(info: dict) -> None:
        bar.update(info["step"] + 1 - bar.n)
        bar.set_postfix(loss=f"{info['loss']:.4f}")

    try:
        if args.model == "shape-classifier":
            record = train_classifier(cfg, out, progress=show)
        else:
            record = train_diffusion(cfg, out, progress=show)
    finally:
        bar.close()
    if not args.json:
        print(json.dumps(record, indent=2))
    return record


def cmd_bench(args: argparse.Namespace) -> dict:
    from workbench.bench import bench_foundation

    suites = {"foundation": bench_foundation}
    if args.suite not in suites:
        raise UserError(f"unknown suite {args.suite!r}; choose one of {', '.join(suites)}")
    report = suites[args.suite](repeats=args.repeats)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{args.suite}.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.json:
        print(json.dumps(report, indent=2))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("models", help="list the embedded models with parameter counts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("sample", help="sample a grid of images and judge them with the shape classifier")
    p.add_argument("--model", default="tiny-unet", help="embedded name, local diffusers folder or hub id")
    p.add_argument("--class", dest="cls", default="all",
                   help=f"class name or index ({', '.join(CLASSES)}), or 'all' to cycle through classes")
    p.add_argument("--n", type=int, default=16, help="number of images (FD-shapes from 64 on)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's shipped value)")
    p.add_argument("--scheduler", default=None, help="ddim (default), dpmpp, euler, unipc, ddpm")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", default=None, help="write the image grid to this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train", help="train an embedded model or the shape classifier (CUDA when present)")
    p.add_argument("--model", required=True, choices=["tiny-unet", "tiny-dit", "shape-classifier"])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=500, help="linear warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--sample-every", type=int, default=2000, help="steps between sample grids (0: never)")
    p.add_argument("--time-limit-min", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--device", default=None)
    p.add_argument("--fp32", action="store_true", help="train in fp32 (TF32) instead of bf16 autocast on CUDA")
    p.add_argument("--init-from", default=None, help="pipeline folder to continue training from")
    p.add_argument("--out", required=True, help="folder for the trained model, grids and training.json")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="run a benchmark suite (numbers for docs/)")
    p.add_argument("suite", help="foundation")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument("--out", default=None, help="folder for the suite's JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    from workbench.zoo import ModelLoadError

    diffusers_logging.disable_progress_bar()  # the CLI reports progress itself; keep stderr readable

    try:
        report = args.func(args)
    except (UserError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(report, default=str))
    return 0
