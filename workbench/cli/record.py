"""CLI commands of the recorder and the analysers: ``record``, ``runs`` and ``analyze``."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import (
    MAX_STEPS,
    UserError,
    add_condition_arguments,
    check_steps,
    conditions_for,
    device_arg,
    load_model,
    number,
    parse_seeds,
    scheduler_arg,
)


def cmd_record(args: argparse.Namespace) -> dict:
    from workbench import distributed
    from workbench.record.plan import BudgetError
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore, StoreError, check_out_dir

    seeds = parse_seeds(args.seed)
    if not distributed.launched():  # under torchrun rank 0 checks the folder for the job (record_sharded)
        check_out_dir(args.out, args.overwrite)  # before loading the model: a refusal (a UserError) costs nothing
    pipe = load_model(args)
    check_steps(pipe, args.steps)
    conditions, options = conditions_for(args, pipe, len(seeds))
    labels, prompts = (None, conditions) if options is not None else (conditions, None)
    from tqdm.auto import tqdm

    bars: list = []  # made at the first step: a refusal before sampling prints its one line and nothing else

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="record", unit="step", file=sys.stderr, disable=args.json))
        bars[0].update(done - bars[0].n)

    try:
        out = record_run(pipe, args.model, args.out, labels=labels, prompts=prompts, options=options, seeds=seeds,
                         steps=args.steps,
                         scheduler=args.scheduler, reduction=args.reduce,
                         blocks=args.blocks.split(",") if args.blocks else None, guidance_scale=args.guidance,
                         disk_budget=int(args.budget_mb * 2**20) if args.budget_mb else None,
                         memory_budget=int(args.memory_budget_mb * 2**20) if args.memory_budget_mb else None,
                         progress=progress, overwrite=args.overwrite)
    except (BudgetError, StoreError, ValueError) as exc:
        raise UserError(str(exc)) from None
    finally:
        for bar in bars:
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
    from pathlib import Path

    from workbench.paths import runs_root
    from workbench.record.store import list_runs

    args.dir = str(args.dir or runs_root())
    if Path(args.dir).exists() and not Path(args.dir).is_dir():
        raise UserError(f"{args.dir} is a file; give the folder that holds the runs")
    rows = list_runs(args.dir)
    if not args.json:
        if not rows:
            print(f"no recorded runs under {args.dir}" + ("" if Path(args.dir).exists() else " (it does not exist)"))
        for r in rows:
            if r["status"] in ("broken", "damaged"):  # what is wrong, on the line of its run
                print(f"{r['status']:<11} {r['path']}: {r['reason']}")
                continue
            print(f"{r['status']:<11} {r['model'] or '':<12} {r['scheduler'] or '':<6} "
                  f"{r['steps_done']}/{r['steps']} steps  {r['reduction'] or '':<7} {r['path']}")
    return {"runs": rows}


def cmd_analyze(args: argparse.Namespace) -> dict:
    from workbench.analysis.report import analyze_store
    from workbench.record.store import FeatureStore, StoreError

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


def add_commands(sub) -> None:
    p = sub.add_parser("record", help="record every block's features across the steps of one sampling run")
    p.add_argument("--model", default="tiny-unet")
    p.add_argument("--class", dest="cls", default="circle", help="class name or index (class-conditional models)")
    add_condition_arguments(p)
    p.add_argument("--steps", type=number(int, 1, MAX_STEPS), default=50)
    p.add_argument("--seed", default="0-3", help="seeds, one image each: 0-3, 1,5,9 …")
    p.add_argument("--scheduler", default=None, type=scheduler_arg,
                   help="ddim | dpmpp | euler | unipc | ddpm (default: the pipeline's own; the shipped models': DDIM)")
    p.add_argument("--guidance", type=number(float, 0), default=None)
    p.add_argument("--reduce", default="pool16", choices=["full", "pool16", "stats"],
                   help="full maps, maps pooled to ≤16×16 in float16, or streaming statistics only")
    p.add_argument("--blocks", default=None, help="comma-separated block names (default: all)")
    p.add_argument("--budget-mb", type=number(float, 0, above=True), default=None,
                   help="refuse runs whose store would exceed this")
    p.add_argument("--memory-budget-mb", type=number(float, 0, above=True), default=None,
                   help="refuse runs whose recorder would hold more device memory than this")
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--out", required=True, help="run folder: new or empty (created)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (only its manifest.json, arrays.zarr and part-* folders)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("runs", help="list recorded runs with their status")
    p.add_argument("dir", nargs="?", default=None,
                   help="folder to list (default: the app's recordings: $FRDIFF_RUNS, else "
                        "~/.local/share/frdiff-workbench/runs)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("analyze", help="per-block temporal redundancy of a recorded run, its spread across samples, "
                                       "and the frequency content of features, predicted x0 and final images")
    p.add_argument("dir", help="a run folder written by `record`")
    p.add_argument("--threshold", type=number(float, 0), default=0.1,
                   help="keyframe whenever the accumulated relative L1 since the last one exceeds this")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_analyze)
