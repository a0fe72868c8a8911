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


def _load(args: argparse.Namespace):
    import torch

    from workbench.zoo import load_pipeline

    return load_pipeline(args.model, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def cmd_sample(args: argparse.Namespace) -> dict:
    from workbench.sampling import judge, sample
    from workbench.train import save_grid

    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    pipe = _load(args)
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
        save_grid(result.images, out, rows=max(1, int(args.n**0.5)))
        report["out"] = str(out)
    if not args.json:
        for k, v in report.items():
            print(f"{k}: {v}")
    return report


def cmd_train(args: argparse.Namespace) -> dict:
    from workbench import distributed
    from workbench.train import TrainConfig, train_classifier, train_diffusion

    try:
        cfg = TrainConfig(model=args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          warmup=args.warmup, seed=args.seed, data_seed=args.data_seed,
                          sample_every=args.sample_every, time_limit_min=args.time_limit_min, device=args.device,
                          init_from=args.init_from, bf16=not args.fp32, lr_schedule=args.lr_schedule,
                          loss_weighting=args.loss_weighting, min_snr_gamma=args.min_snr_gamma,
                          ema_decay=args.ema_decay, teacher=args.teacher, distill_weight=args.distill_weight)
    except ValueError as exc:
        distributed.refuse(str(exc))
    if cfg.model == "shape-classifier" and distributed.is_distributed():
        distributed.refuse("the shape classifier trains in one process; run it without torchrun")
    out = Path(args.out)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, desc=f"train {args.model}", unit="step", file=sys.stderr,
               disable=not distributed.is_main())

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


def _example_call(pipe, n: int = 1):
    """A one-step call of ``pipe`` for discovering its blocks on real inputs."""
    if hasattr(pipe, "class_to_index"):
        return lambda: pipe([0] * n, num_inference_steps=1, output_type="pt")
    return lambda: pipe(prompt=["a photo"] * n, num_inference_steps=1, output_type="latent")


def cmd_blocks(args: argparse.Namespace) -> dict:
    from frdiff.blocks import discover_blocks
    from workbench.recorder import capture_denoiser_call, denoiser_of

    pipe = _load(args)
    call_args, call_kwargs = capture_denoiser_call(pipe, _example_call(pipe))
    blocks = discover_blocks(denoiser_of(pipe), *call_args, **call_kwargs)
    rows = [dict(name=b.name, type=b.type, kind=b.kind, output_shape=list(b.output_shape), parameters=b.parameters,
                 flops=b.flops, flop_share=b.flop_share) for b in blocks]
    if not args.json:
        print(f"{'block':<34} {'type':<22} {'kind':<11} {'output shape':<20} {'params':>9} {'FLOP share':>10}")
        for r in rows:
            print(f"{r['name']:<34} {r['type']:<22} {r['kind']:<11} {str(r['output_shape']):<20} "
                  f"{r['parameters']:>9} {r['flop_share']:>10.1%}")
        print(f"blocks cover {sum(r['flop_share'] for r in rows):.1%} of one denoiser call's FLOPs")
    return {"model": args.model, "blocks": rows}


def cmd_record(args: argparse.Namespace) -> dict:
    from workbench.recorder import BudgetError, record_run
    from workbench.store import FeatureStore

    pipe = _load(args)
    seeds = parse_seeds(args.seed)
    labels = prompts = None
    if args.prompt is not None:
        prompts = [args.prompt] * len(seeds)
    else:
        try:
            labels = [pipe.class_to_index(args.cls)] * len(seeds)
        except (AttributeError, ValueError) as exc:
            msg = str(exc) if isinstance(exc, ValueError) else "this model takes --prompt, not --class"
            raise UserError(msg) from None
    from tqdm.auto import tqdm

    bar = tqdm(total=args.steps, desc="record", unit="step", file=sys.stderr, disable=args.json)
    try:
        out = record_run(pipe, args.model, args.out, labels=labels, prompts=prompts, seeds=seeds, steps=args.steps,
                         scheduler=args.scheduler, reduction=args.reduce,
                         blocks=args.blocks.split(",") if args.blocks else None, guidance_scale=args.guidance,
                         disk_budget=int(args.budget_mb * 2**20) if args.budget_mb else None,
                         memory_budget=int(args.memory_budget_mb * 2**20) if args.memory_budget_mb else None,
                         progress=lambda done, total: bar.update(done - bar.n))
    except (BudgetError, ValueError) as exc:
        raise UserError(str(exc)) from None
    finally:
        bar.close()
    store = FeatureStore.open(out)
    report = dict(out=str(out), complete=store.complete, steps=store.steps_done, blocks=len(store.blocks),
                  reduction=args.reduce, timing=store.manifest["timing"],
                  store_bytes=store.disk_bytes())
    if not args.json:
        for k, v in report.items():
            print(f"{k}: {v}")
    return report


def cmd_runs(args: argparse.Namespace) -> dict:
    from workbench.store import list_runs

    rows = list_runs(args.dir)
    if not args.json:
        if not rows:
            print(f"no recorded runs under {args.dir}")
        for r in rows:
            print(f"{r['status']:<11} {r.get('model', ''):<12} {r.get('scheduler', ''):<6} "
                  f"{r.get('steps_done', '')}/{r.get('steps', '')} steps  {r.get('reduction', ''):<7} {r['path']}")
    return {"runs": rows}


def cmd_analyze(args: argparse.Namespace) -> dict:
    from workbench.analysis.report import analyze_store
    from workbench.store import FeatureStore, StoreError

    try:
        store = FeatureStore.open(args.dir)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    report = analyze_store(store, threshold=args.threshold)

    def _num(value: float | None, digits: int = 5) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    if not args.json:
        state = "complete" if report["complete"] else "INCOMPLETE"
        print(f"{args.dir}: {report['model']}, {report['steps']} steps ({state}), reduction {report['reduction']}, "
              f"{report['samples']} samples{' (conditional half)' if report['cfg_layout'] != 'none' else ''}")
        print(f"keyframes at accumulated rel-L1 > {args.threshold}; spread = std across samples, mean over steps; "
              "high = feature energy above 2/3 Nyquist at the first → last step")
        print(f"{'block':<34} {'adj. cosine':>11} {'± spread':>9} {'adj. rel-L1':>11} {'± spread':>9} "
              f"{'keyframes':>9} {'high (features)':>16}")
        for b in report["blocks"]:
            sp, bands = b["spread"], b["feature_bands"]
            high = f"{bands['high'][0]:.3f} → {bands['high'][-1]:.3f}" if bands else "—"
            print(f"{b['name']:<34} {_num(b['mean_adjacent_cosine'], 4):>11} {_num(sp['mean_adjacent_cosine_std']):>9} "
                  f"{_num(b['mean_adjacent_rel_l1'], 4):>11} {_num(sp['mean_adjacent_rel_l1_std']):>9} "
                  f"{b['keyframes']:>9} {high:>16}")
        freq = report["frequency"] or {"final": None}
        if "predicted_x0" in freq:
            x0 = freq["predicted_x0"]["bands"]
            n = len(x0["low"])
            print(f"predicted x0 ({freq['predicted_x0']['prediction_type']}) band energy low / mid / high:")
            for i in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}):
                print(f"  step {i:>3} (t={report['timesteps'][i]:>4}): "
                      f"{x0['low'][i]:.3f} / {x0['mid'][i]:.3f} / {x0['high'][i]:.3f}")
        if freq["final"]:
            fb = freq["final"]["bands"]
            print(f"final {freq['final']['space']} sample: {fb['low']:.3f} / {fb['mid']:.3f} / {fb['high']:.3f}")
        for note in report["notes"]:
            print(f"note: {note}")
    return report


# Options each suite reads (recorded with its JSON as the exact command that produced it).
BENCH_OPTIONS = {
    "quality-vs-latency": ["models", "seeds", "steps", "repeats", "device", "no_autofr", "autofr_iterations",
                           "autofr_train_seeds", "no_peers", "flop_seeds", "small"],
    "schedulers": ["models", "seeds", "scheduler_steps", "repeats", "device", "small"],
    "overhead": ["repeats", "small", "no_app"],
    "gpu-speed": ["repeats", "small", "compile"],
    "engine-quality": ["repeats", "seeds", "scheduler_seeds"],
    "run-throughput": ["repeats", "small", "seeds", "steps"],
    "autofr": ["models", "steps", "autofr_iterations", "train_seeds", "val_seeds", "repeats", "device"],
}
ALL_SUITES = ("quality-vs-latency", "schedulers", "gpu-speed", "overhead")


def bench_command(args: argparse.Namespace, suite: str) -> str:
    """The command line that runs ``suite`` with ``args``' settings, every option spelled out."""
    parts = ["python -m workbench bench", suite]
    for name in BENCH_OPTIONS.get(suite, ["repeats"]):
        value = getattr(args, name, None)
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value not in (None, False):
            parts += [flag, str(value)]
    return " ".join(parts)


def _run_suite(args: argparse.Namespace, suite: str) -> dict:
    from workbench.bench import bench_analysis, bench_foundation, bench_record_overhead
    from workbench.bench_app import bench_app_startup
    from workbench.bench_autofr import bench_autofr
    from workbench.bench_distributed import bench_run_throughput
    from workbench.bench_engine import bench_engine_quality, bench_gpu_speed
    from workbench.bench_quality import bench_overhead, bench_quality_latency, bench_schedulers

    suites = {"foundation": bench_foundation, "record-overhead": bench_record_overhead, "analysis": bench_analysis,
              "gpu-speed": bench_gpu_speed, "engine-quality": bench_engine_quality, "app-startup": bench_app_startup,
              "quality-vs-latency": bench_quality_latency, "schedulers": bench_schedulers, "overhead": bench_overhead,
              "run-throughput": bench_run_throughput, "autofr": bench_autofr}
    if suite not in suites:
        raise UserError(f"unknown suite {suite!r}; choose one of {', '.join([*suites, 'all', 'report'])}")
    small = bool(args.small)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    extra: dict = {}
    if suite == "gpu-speed":
        extra = {"compile": args.compile, "small": True if small else None}
    elif suite == "engine-quality":
        extra = {"seeds": args.seeds or 64, "scheduler_seeds": args.scheduler_seeds}
    elif suite == "quality-vs-latency":
        extra = {"seeds": args.seeds or (4 if small else 64), "steps": args.steps or (6 if small else 50),
                 "models": models, "device": args.device, "autofr": not args.no_autofr,
                 "autofr_iterations": args.autofr_iterations or (2 if small else 30),
                 "autofr_train_seeds": args.autofr_train_seeds or (2 if small else 32), "peers": not args.no_peers,
                 "flop_seeds": args.flop_seeds or (2 if small else 4), "small": small}
    elif suite == "schedulers":
        steps = args.scheduler_steps or ("4" if small else "20,50")
        try:
            step_list = tuple(int(x) for x in steps.split(","))
        except ValueError:
            raise UserError(f"--scheduler-steps takes step counts like 20,50, got {steps!r}") from None
        extra = {"seeds": args.seeds or (4 if small else 64), "steps": step_list, "models": models,
                 "device": args.device}
    elif suite == "overhead":
        extra = {"small": small, "app": not args.no_app}
    elif suite == "run-throughput":  # under torchrun: the whole job's throughput (docs/distributed.md)
        extra = {"small": True if small else None, "seeds": args.seeds, "steps": args.steps}
    elif suite == "autofr":  # Auto-FR against the hand-made front on held-out seeds (docs/autofr.md)
        extra = {"models": models, "device": args.device, "steps": args.steps or 50,
                 "iterations": args.autofr_iterations or 30,
                 **({"train_seeds": parse_seeds(args.train_seeds)} if args.train_seeds else {}),
                 **({"val_seeds": parse_seeds(args.val_seeds)} if args.val_seeds else {})}
    try:
        report = suites[suite](repeats=args.repeats, **extra)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    report["command"] = bench_command(args, suite)
    if "machine" not in report:
        from workbench.bench import machine_info

        report["machine"] = machine_info()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{suite}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def _bench_report(args: argparse.Namespace, folder: Path, markdown: Path) -> dict:
    from workbench.bench_report import write_report

    try:
        return write_report(folder, markdown)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def cmd_bench(args: argparse.Namespace) -> dict:
    if args.suite == "report":
        if not args.source or not args.out:
            raise UserError("bench report needs --from DIR (the suites' JSONs) and --out FILE.md")
        report = _bench_report(args, Path(args.source), Path(args.out))
    elif args.suite == "all":
        if not args.out:
            raise UserError("bench all needs --out DIR for the suites' JSONs")
        report = {"suites": {}}
        for suite in ALL_SUITES:
            print(f"bench {suite} …", file=sys.stderr)
            report["suites"][suite] = _run_suite(args, suite)["command"]
        from importlib.util import find_spec

        if find_spec("plotly") is None:
            report["report"] = "skipped: plotly is not installed here; run `bench report` where it is"
        else:
            md = Path(args.report) if args.report else Path(args.out) / "benchmarks.md"
            report["report"] = _bench_report(args, Path(args.out), md)
    else:
        report = _run_suite(args, args.suite)
    if not args.json:
        print(json.dumps(report, indent=2, default=str))
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
    p.add_argument("--batch-size", type=int, default=256, help="images per step (per process under torchrun)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=500, help="linear warm-up steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--sample-every", type=int, default=2000, help="steps between sample grids (0: never)")
    p.add_argument("--time-limit-min", type=float, default=None, help="stop after this many minutes")
    p.add_argument("--device", default=None)
    p.add_argument("--fp32", action="store_true", help="train in fp32 (TF32) instead of bf16 autocast on CUDA")
    p.add_argument("--init-from", default=None, help="pipeline folder to continue training from")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="after warm-up: constant, or a half cosine to 0 at the last step (with --time-limit-min the "
                        "step count is fitted to the time from the measured speed)")
    p.add_argument("--loss-weighting", default="none", choices=["none", "min-snr"],
                   help="per-noise-level weights of the ε loss: none, or Min-SNR-γ (arXiv 2303.09556)")
    p.add_argument("--min-snr-gamma", type=float, default=5.0, help="γ of Min-SNR-γ weighting")
    p.add_argument("--ema-decay", type=float, default=0.999, help="decay of the weights' moving average (shipped)")
    p.add_argument("--teacher", default=None, help="pipeline (embedded name or folder) to distil from")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="share of the teacher's predicted noise in the target, 0-1 (needs --teacher)")
    p.add_argument("--out", required=True, help="folder for the trained model, grids and training.json")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("blocks", help="table of the denoiser's hookable blocks with shapes and FLOP shares")
    p.add_argument("--model", default="tiny-unet", help="embedded name, local diffusers folder or hub id")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_blocks)

    p = sub.add_parser("record", help="record every block's features across the steps of one sampling run")
    p.add_argument("--model", default="tiny-unet")
    p.add_argument("--class", dest="cls", default="circle", help="class name or index (class-conditional models)")
    p.add_argument("--prompt", default=None, help="prompt (text-to-image pipelines)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", default="0-3", help="seeds, one image each: 0-3, 1,5,9 …")
    p.add_argument("--scheduler", default="ddim", help="ddim | dpmpp | euler | unipc")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--reduce", default="pool16", choices=["full", "pool16", "stats"],
                   help="full maps, maps pooled to ≤16×16 in float16, or streaming statistics only")
    p.add_argument("--blocks", default=None, help="comma-separated block names (default: all)")
    p.add_argument("--budget-mb", type=float, default=None, help="refuse runs whose store would exceed this")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="refuse runs whose recorder would hold more device memory than this")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="run folder (created)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("runs", help="list recorded runs with their status")
    p.add_argument("dir", nargs="?", default="runs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("analyze", help="per-block temporal redundancy of a recorded run, its spread across samples, "
                                       "and the frequency content of features, predicted x0 and final images")
    p.add_argument("dir", help="a run folder written by `record`")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="keyframe whenever the accumulated relative L1 since the last one exceeds this")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("bench", help="run a benchmark suite (numbers for docs/), all of them, or the report")
    p.add_argument("suite", help="quality-vs-latency | schedulers | gpu-speed | overhead | all | report | autofr | "
                                 "run-throughput | foundation | record-overhead | analysis | engine-quality | "
                                 "app-startup")
    p.add_argument("--compile", action="store_true", help="gpu-speed: also measure under torch.compile")
    p.add_argument("--small", action="store_true",
                   help="tiny sizes (CI smoke; gpu-speed: reduced-size models, the CPU variant)")
    p.add_argument("--seeds", type=int, default=None,
                   help="samples per method (default 64; FD-shapes from 64; --small: 4)")
    p.add_argument("--scheduler-seeds", type=int, default=None,
                   help="engine-quality: samples per variant in the scheduler comparison (default: --seeds)")
    p.add_argument("--steps", type=int, default=None,
                   help="quality-vs-latency: steps of the DDIM reference (default 50; sweeps scale with it)")
    p.add_argument("--scheduler-steps", default=None, help="schedulers: step counts (default 20,50)")
    p.add_argument("--models", default="tiny-unet,tiny-dit", help="quality-vs-latency, schedulers: models")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--no-autofr", action="store_true", help="quality-vs-latency: skip Auto-FR (training takes minutes)")
    p.add_argument("--autofr-iterations", type=int, default=None, help="Auto-FR Adam steps (default 30)")
    p.add_argument("--autofr-train-seeds", type=int, default=None,
                   help="Auto-FR training seeds, from 1000 (default 32; evaluation seeds start at 0)")
    p.add_argument("--train-seeds", default=None, help="autofr: Auto-FR training seeds (default 0-31)")
    p.add_argument("--val-seeds", default=None, help="autofr: held-out evaluation seeds (default 100-163)")
    p.add_argument("--no-peers", action="store_true", help="quality-vs-latency: skip DeepCache and diffusers caches")
    p.add_argument("--flop-seeds", type=int, default=None, help="images of the FLOP-counting run (default 4)")
    p.add_argument("--no-app", action="store_true", help="overhead: skip the app start-up part")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument("--out", default=None, help="folder for the suites' JSON (report: the markdown file)")
    p.add_argument("--from", dest="source", default=None, help="report: folder of the suites' JSONs")
    p.add_argument("--report", default=None, help="all: where to write the markdown (default OUT/benchmarks.md)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench)

    from workbench.cli_engine import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    from workbench.zoo import ModelLoadError

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
    if getattr(args, "json", False):
        print(json.dumps(report, default=str))
    return 0
