"""``python -m workbench bench SUITE``: run a benchmark suite (:mod:`workbench.bench`), all of them, or the report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.cli.common import (
    MAX_STEPS,
    UserError,
    compile_options,
    device_arg,
    file_out,
    folder_out,
    inductor_option,
    number,
    parse_seeds,
)
from workbench.files import write_json

# Options each suite reads (recorded with its JSON as the exact command that produced it).
BENCH_OPTIONS = {
    "quality-vs-latency": ["models", "seeds", "steps", "repeats", "device", "no_autofr", "autofr_iterations",
                           "autofr_train_seeds", "no_peers", "no_plans", "flop_seeds", "small"],
    "schedulers": ["models", "seeds", "scheduler_steps", "schedulers", "repeats", "device", "small"],
    "overhead": ["repeats", "small", "no_app"],
    "gpu-speed": ["models", "images", "repeats", "small", "compile", "cuda_graphs", "channels_last", "profile",
                  "no_peers", "no_forecasts", "peers_compiled", "inductor_option"],
    "engine-quality": ["models", "repeats", "seeds", "scheduler_seeds"],
    "run-throughput": ["repeats", "small", "seeds", "steps"],
    "autofr": ["models", "steps", "autofr_iterations", "train_seeds", "val_seeds", "repeats", "device"],
    "memory": ["device"],
    "cli-startup": ["repeats"],
}
ALL_SUITES = ("quality-vs-latency", "schedulers", "gpu-speed", "overhead")
SUITES = ("quality-vs-latency", "schedulers", "gpu-speed", "overhead", "autofr", "run-throughput", "foundation",
          "record-overhead", "analysis", "engine-quality", "app-startup", "memory", "cli-startup")


def options_taken(suite: str) -> set[str]:
    """The bench options ``suite`` reads (argparse names); every suite also takes --out and --json."""
    if suite == "report":
        return {"source", "out", "json"}
    if suite == "all":
        return {name for each in ALL_SUITES for name in BENCH_OPTIONS[each]} | {"report", "out", "json"}
    return {*BENCH_OPTIONS.get(suite, ["repeats"]), "out", "json"}


def refuse_unused_options(args: argparse.Namespace) -> None:
    """An option the suite does not read is refused, with the ones it does: silently ignoring ``--device cuda`` would
    leave a user believing a CPU measurement was taken on the GPU."""
    taken = options_taken(args.suite)
    given = sorted(name for name, default in args.option_defaults.items()
                   if name not in taken and getattr(args, name) != default)
    if given:
        flags = lambda names: ", ".join(OPTION_FLAGS.get(n, "--" + n.replace("_", "-")) for n in sorted(names))  # noqa: E731
        raise UserError(f"bench {args.suite} does not take {flags(given)}; it takes {flags(taken)}")


OPTION_FLAGS = {"source": "--from"}


def default_models(suite: str) -> str:
    return "sd15-unet,dit-xl-2" if suite == "gpu-speed" else "tiny-unet,tiny-dit"


def bench_command(args: argparse.Namespace, suite: str) -> str:
    """The command line that runs ``suite`` with ``args``' settings, every option spelled out."""
    parts = ["python -m workbench bench", suite]
    for name in BENCH_OPTIONS.get(suite, ["repeats"]):
        value = getattr(args, name, None)
        if name == "models" and value is None and suite != "engine-quality":  # its command names models if given
            value = default_models(suite)
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):  # a repeatable KEY=VALUE option
            for key, item in value:
                parts += [flag, f"{key}={str(item).lower() if isinstance(item, bool) else item}"]
        elif value not in (None, False):
            parts += [flag, str(value)]
    return " ".join(parts)


def _run_suite(args: argparse.Namespace, suite: str) -> dict:
    from workbench.bench.app import bench_app_startup
    from workbench.bench.autofr import bench_autofr
    from workbench.bench.engine import bench_engine_quality, bench_gpu_speed
    from workbench.bench.foundation import bench_analysis, bench_foundation, bench_record_overhead
    from workbench.bench.memory import bench_memory
    from workbench.bench.quality import bench_overhead, bench_quality_latency, bench_schedulers
    from workbench.bench.startup import bench_cli_startup
    from workbench.bench.throughput import bench_run_throughput

    suites = {"foundation": bench_foundation, "record-overhead": bench_record_overhead, "analysis": bench_analysis,
              "gpu-speed": bench_gpu_speed, "engine-quality": bench_engine_quality, "app-startup": bench_app_startup,
              "quality-vs-latency": bench_quality_latency, "schedulers": bench_schedulers, "overhead": bench_overhead,
              "run-throughput": bench_run_throughput, "autofr": bench_autofr, "memory": bench_memory,
              "cli-startup": bench_cli_startup}
    if suite not in suites:
        raise UserError(f"unknown suite {suite!r}; choose one of {', '.join([*SUITES, 'all', 'report'])}")
    small = bool(args.small)
    models = tuple(m.strip() for m in (args.models or default_models(suite)).split(",") if m.strip())
    extra: dict = {}
    if suite == "gpu-speed":
        try:
            images = tuple(int(x) for x in (args.images or "1").split(","))
        except ValueError:
            raise UserError(f"--images takes image counts like 1,8, got {args.images!r}") from None
        extra = {"compile": args.compile, "cuda_graphs": args.cuda_graphs, "small": True if small else None,
                 "models": models, "images": images, "peers": not args.no_peers,
                 "channels_last": args.channels_last, "profile": args.profile, "forecasts": not args.no_forecasts,
                 "peers_compiled": args.peers_compiled,
                 "compile_options": compile_options(args, [c.strip() for c in str(args.compile).split(",")])}
        if args.out:  # a long GPU run keeps each finished (model, image count) if it is stopped: beside, not over,
            # an earlier complete result, which the finished run replaces
            def checkpoint(partial, out=Path(args.out)):
                partial = {**partial, "command": bench_command(args, suite)}
                write_json(out / f"{suite}.partial.json", partial, default=str)

            extra["checkpoint"] = checkpoint
    elif suite == "engine-quality":
        extra = {"seeds": args.seeds or 64, "scheduler_seeds": args.scheduler_seeds,
                 **({"models": models} if args.models else {})}
    elif suite == "quality-vs-latency":
        extra = {"seeds": args.seeds or (4 if small else 64), "steps": args.steps or (6 if small else 50),
                 "models": models, "device": args.device, "autofr": not args.no_autofr,
                 "autofr_iterations": args.autofr_iterations or (2 if small else 30),
                 "autofr_train_seeds": args.autofr_train_seeds or (2 if small else 32), "peers": not args.no_peers,
                 "plans": not args.no_plans,
                 "flop_seeds": args.flop_seeds or (2 if small else 4), "small": small}
    elif suite == "schedulers":
        steps = args.scheduler_steps or ("4" if small else "20,50")
        try:
            step_list = tuple(int(x) for x in steps.split(","))
        except ValueError:
            raise UserError(f"--scheduler-steps takes step counts like 20,50, got {steps!r}") from None
        from workbench.models.schedulers import scheduler_key

        try:
            scheds = tuple(scheduler_key(x) for x in (args.schedulers or "ddim,dpmpp,euler,unipc").split(","))
        except ValueError as exc:
            raise UserError(f"--schedulers: {exc}") from None
        extra = {"seeds": args.seeds or (4 if small else 64), "steps": step_list, "models": models,
                 "device": args.device, "schedulers": scheds}
    elif suite == "overhead":
        extra = {"small": small, "app": not args.no_app}
    elif suite == "run-throughput":  # under torchrun: the whole job's throughput (docs/distributed.md)
        extra = {"small": True if small else None, "seeds": args.seeds, "steps": args.steps}
    elif suite == "memory":  # cache bytes predicted, held and (CUDA) allocated; cache dtype cost
        extra = {"device": args.device}
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
        from workbench.bench.common import machine_info

        report["machine"] = machine_info()
    if args.out:
        write_json(Path(args.out) / f"{suite}.json", report, default=str)
        (Path(args.out) / f"{suite}.partial.json").unlink(missing_ok=True)
    return report


def _bench_report(args: argparse.Namespace, folder: Path, markdown: Path) -> dict:
    from workbench.bench.report import write_report

    try:
        return write_report(folder, markdown)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def cmd_bench(args: argparse.Namespace) -> dict:
    if args.suite in (*SUITES, "all", "report"):
        refuse_unused_options(args)
    if args.suite == "report":  # --out is the markdown file; otherwise the folder of the suites' JSONs
        file_out(args.out, example="benchmarks.md")
    else:
        folder_out(args.out)  # refused before a suite runs for minutes, not after
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


def add_commands(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark suite (numbers for docs/), all of them, or the report")
    p.add_argument("suite", help="quality-vs-latency | schedulers | gpu-speed | overhead | all | report | autofr | "
                                 "run-throughput | foundation | record-overhead | analysis | engine-quality | "
                                 "app-startup | memory | cli-startup")
    p.add_argument("--compile", default="off",
                   help="gpu-speed: also measure frdiff's compile modes, a comma list: regional (each block a "
                        "compiled graph with its reuse rule inside), full (each step configuration one compiled graph "
                        "of the whole denoiser call), wrapped (denoiser.compile() around the eager hooks)")
    p.add_argument("--cuda-graphs", nargs="?", const="blocks", default=False, choices=["blocks", "step", "both"],
                   help="gpu-speed, CUDA only: also the regional graphs captured as CUDA graphs (blocks, the default), "
                        "whole steps captured as CUDA graphs over each compile mode (step), or both")
    p.add_argument("--inductor-option", action="append", type=inductor_option, metavar="KEY=VALUE",
                   help="gpu-speed, with --compile regional or full: an option of inductor's for every compiled "
                        "mode of the run (the peers' too), repeatable; cpp_wrapper=true launches kernels from C++")
    p.add_argument("--profile", action="store_true",
                   help="gpu-speed: also where a full and a reuse denoiser call spend their time, by kind of op")
    p.add_argument("--channels-last", action="store_true",
                   help="gpu-speed: the denoisers' weights in channels-last layout (NHWC convolutions), all variants")
    p.add_argument("--small", action="store_true",
                   help="tiny sizes (CI smoke; gpu-speed: reduced-size models, the CPU variant)")
    p.add_argument("--seeds", type=number(int, 1), default=None,
                   help="samples per method (default 64; FD-shapes from 64; --small: 4)")
    p.add_argument("--scheduler-seeds", type=number(int, 1), default=None,
                   help="engine-quality: samples per variant in the scheduler comparison (default: --seeds)")
    p.add_argument("--steps", type=number(int, 1, MAX_STEPS), default=None,
                   help="quality-vs-latency: steps of the DDIM reference (default 50; sweeps scale with it)")
    p.add_argument("--scheduler-steps", default=None, help="schedulers: step counts (default 20,50)")
    p.add_argument("--schedulers", default=None,
                   help="schedulers: which solvers, comma-separated (default ddim,dpmpp,euler,unipc)")
    p.add_argument("--models", default=None,
                   help="quality-vs-latency, schedulers, autofr, engine-quality: models (default "
                        "tiny-unet,tiny-dit; engine-quality also tiny-sd, on the scene captions); "
                        "gpu-speed: sd15-unet,dit-xl-2")
    p.add_argument("--images", default=None, help="gpu-speed: images per call, e.g. 1,8 (default 1)")
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--no-autofr", action="store_true", help="quality-vs-latency: skip Auto-FR (training takes minutes)")
    p.add_argument("--autofr-iterations", type=number(int, 1), default=None, help="Auto-FR Adam steps (default 30)")
    p.add_argument("--autofr-train-seeds", type=number(int, 1), default=None,
                   help="Auto-FR training seeds, from 1000 (default 32; evaluation seeds start at 0)")
    p.add_argument("--train-seeds", default=None, help="autofr: Auto-FR training seeds (default 0-31)")
    p.add_argument("--val-seeds", default=None, help="autofr: held-out evaluation seeds (default 100-163)")
    p.add_argument("--no-peers", action="store_true",
                   help="quality-vs-latency, gpu-speed: skip DeepCache and diffusers caches")
    p.add_argument("--no-forecasts", action="store_true",
                   help="gpu-speed: skip the taylor2 variants (a compile mode then compiles two graph structures, "
                        "not three)")
    p.add_argument("--peers-compiled", action="store_true",
                   help="gpu-speed: also stock and the peers with their repeated blocks compiled as diffusers does "
                        "(compile_repeated_blocks), speedups against stock compiled so")
    p.add_argument("--no-plans", action="store_true",
                   help="quality-vs-latency: skip the policies planned from a recorded run (policy from-run)")
    p.add_argument("--flop-seeds", type=number(int, 1), default=None,
                   help="images of the FLOP-counting run (default 4)")
    p.add_argument("--no-app", action="store_true", help="overhead: skip the app start-up part")
    p.add_argument("--repeats", type=number(int, 1), default=3, help="timed repeats; the median is reported")
    p.add_argument("--out", default=None, help="folder for the suites' JSON (report: the markdown file)")
    p.add_argument("--from", dest="source", default=None, help="report: folder of the suites' JSONs")
    p.add_argument("--report", default=None, help="all: where to write the markdown (default OUT/benchmarks.md)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bench, option_defaults={a.dest: a.default for a in p._actions
                                                    if a.dest not in ("help", "suite")})
