"""CLI commands of the FRDiff engine: ``policy make|validate|remap|from-run`` and ``run``."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import (
    MAX_STEPS,
    UserError,
    add_condition_arguments,
    check_steps,
    compile_options,
    conditions_for,
    device_arg,
    file_out,
    folder_out,
    inductor_option,
    load_model,
    number,
    parse_seeds,
    quiet_diffusers,
    scheduler_arg,
)
from workbench.files import write_json


def _policy_error(exc) -> UserError:
    problems = getattr(exc, "problems", None) or [str(exc)]
    return UserError("invalid policy: " + "; ".join(problems))


def _preset(args, pipe, steps: int):
    import frdiff
    from workbench.models.schedulers import scheduler_name

    try:
        scheduler = args.scheduler or scheduler_name(pipe.scheduler)  # the pipeline's own where none is named
        policy = frdiff.make_preset(args.preset, frdiff.denoiser_of(pipe), steps, scheduler=scheduler,
                                    interval=args.interval, mix=args.mix, reuse=args.reuse, skip_reuse=args.skip_reuse,
                                    forecast_axis=args.forecast_axis, cache_dtype=args.cache_dtype,
                                    warmup=args.warmup, last=args.last_keyframe, skip_space=args.skip_space)
        if args.granularity and args.preset != "deepcache":  # DeepCache-style policies skip whole blocks by design
            policy = policy.replaced(granularity=[args.granularity if k != "generic" else "block"
                                                  for k in policy.kinds]).check()
        return policy
    except (ValueError, frdiff.PolicyError) as exc:
        raise _policy_error(exc) from None


def _prediction(pipe, policy, images: int = 1) -> dict:
    """Predicted speedup and cache bytes of ``policy`` on ``pipe`` for ``images`` images per pipeline call."""
    import frdiff
    from workbench.compare import measure_savings

    savings = measure_savings(pipe)
    per_image = savings["batch"]  # the denoiser batch of the one-image call measured (2 with CFG)
    return {"predicted_speedup": frdiff.predicted_speedup(policy, savings),
            "cache_bytes": frdiff.cache_bytes(policy, savings, batch=per_image * images),
            "reuse": policy.reuse_summary()}


def _load_policy(path: str):
    import frdiff

    try:
        return frdiff.Policy.load(path)
    except frdiff.PolicyError as exc:
        raise _policy_error(exc) from None


def _check_policy_steps(pipe, policy, path: str) -> None:
    from workbench.models.schedulers import train_timesteps

    n = train_timesteps(pipe.scheduler)
    if policy.steps > n:
        raise UserError(f"the policy {path} has {policy.steps} steps, more than the scheduler's {n} training "
                        f"timesteps; remap it: python -m workbench policy remap {path} --steps {n} --out P.json")


def _kinds_line(policy) -> str:
    """One character per step: K full (keyframe), r FR (some blocks reuse), - skipped (λ = 0, no call)."""
    return "".join({"full": "K", "fr": "r", "skip": "-"}[k] for k in policy.step_kinds())


def _quick_make(args: argparse.Namespace) -> dict | None:
    """``policy make`` from the model's metadata file, importing neither torch nor diffusers (issue 21), or ``None``
    when that cannot serve it: a model without valid metadata (hub ids, folders without ``policy-meta.json``, stale
    files), a ``--device`` other than the CPU (the slow path finds out whether it exists), or input the slow path
    has to refuse. The file and the report are the slow path's, byte for byte (:mod:`workbench.quickpolicy`); the
    FLOP shares, measured on the CPU, are those of any device (the FLOP counter counts each op by a formula of its
    shapes, the same for every SDPA kernel)."""
    from workbench import quickpolicy
    from workbench.models import meta

    if args.device not in (None, "cpu"):
        return None
    card = meta.load(args.model)
    if card is None:
        return None
    policy = quickpolicy.make(card, args.preset, args.steps, scheduler=args.scheduler, interval=args.interval,
                              mix=args.mix, reuse=args.reuse, skip_reuse=args.skip_reuse,
                              forecast_axis=args.forecast_axis, cache_dtype=args.cache_dtype,
                              granularity=args.granularity, warmup=args.warmup, last=args.last_keyframe,
                              skip_space=args.skip_space)
    if policy is None:
        return None
    quickpolicy.save(policy, args.out)
    return {"out": args.out, **quickpolicy.report(policy, card["savings"])}


def cmd_policy(args: argparse.Namespace) -> dict:
    if args.action == "make":
        if not args.out:
            raise UserError("policy make needs --out P.json")
        file_out(args.out, kind="policy")  # before anything is made: a folder is refused, not written into
        args.model = args.model or "tiny-unet"
        args.steps = 50 if args.steps is None else args.steps
        report = _quick_make(args)
        if report is None:  # load the model: its blocks, fingerprint and FLOP shares from the real thing
            quiet_diffusers()
            pipe = load_model(args)
            check_steps(pipe, args.steps)
            policy = _preset(args, pipe, args.steps)
            policy.save(args.out)
            report = {"out": args.out, "blocks": len(policy.blocks), "steps": policy.steps,
                      "denoiser_calls": policy.denoiser_calls(), "step_kinds": _kinds_line(policy),
                      **_prediction(pipe, policy)}
    elif args.action == "validate":
        if not args.file:
            raise UserError("policy validate needs a policy JSON file")
        if args.out or args.steps is not None:  # refused, not silently ignored
            raise UserError("policy validate reads a policy and writes nothing; --out and --steps are for make and "
                            "remap")
        policy = _load_policy(args.file)
        if args.model:
            import frdiff

            quiet_diffusers()
            pipe = load_model(args)
            den = frdiff.denoiser_of(pipe)
            problems = policy.problems(model_blocks=dict(frdiff.find_blocks(den)),
                                       fingerprint=frdiff.model_fingerprint(den))
            if problems:
                raise UserError("invalid policy for " + args.model + ": " + "; ".join(problems))
        report = {"valid": True, "file": args.file, "blocks": len(policy.blocks), "steps": policy.steps,
                  "denoiser_calls": policy.denoiser_calls(),
                  "reuse": policy.reuse_summary(), "skip_space": policy.skip_space,
                  "forecast_axis": policy.forecast_axis,
                  "cache_dtype": policy.cache_dtype, "notes": policy.load_notes}
        if args.model:
            report.update(_prediction(pipe, policy))
    elif args.action == "remap":
        if not args.out or not args.file:
            raise UserError("policy remap needs a policy file, --steps S and --out P.json")
        if args.steps is None:
            raise UserError("policy remap needs --steps S, the step count to remap the policy to")
        file_out(args.out, kind="policy")
        policy = _load_policy(args.file).remap(args.steps)
        policy.save(args.out)
        report = {"out": args.out, "steps": policy.steps, "denoiser_calls": policy.denoiser_calls(),
                  "reuse": policy.reuse_summary()}
    elif args.action == "from-run":
        if not args.out or (args.threshold is None) == (args.target_compute is None):
            raise UserError("policy from-run needs --out P.json and one of --threshold δ (keyframes where the "
                            "accumulated change exceeds δ) or --target-compute C (keyframes and reuse mode per block "
                            "from the run's forecast errors, at compute ≤ C)")
        ignored = [flag for flag, value, default in (
            ("--reuse", args.reuse, "hold"), ("--skip-reuse", args.skip_reuse, None),
            ("--skip-space", args.skip_space, "output"), ("--forecast-axis", args.forecast_axis, "step"),
            ("--cache-dtype", args.cache_dtype, None), ("--warmup", args.warmup, 0),
            ("--last-keyframe", args.last_keyframe, False), ("--steps", args.steps, None),
            ("--preset", args.preset, "uniform"), ("--interval", args.interval, 2),
            ("--scheduler", args.scheduler, "ddim")) if value != default]
        if ignored:  # refused, not silently dropped
            raise UserError(f"policy from-run chooses the keyframes and reuse modes from the run itself; "
                            f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} for policy make and run "
                            f"(edit the result in the Policy builder to change them)")
        file_out(args.out, kind="policy")
        quiet_diffusers()
        report = _policy_from_run(args)
    else:
        raise UserError(f"unknown policy action {args.action!r}")
    if not args.json:
        for k, v in report.items():
            print(f"{k}: {v}")
    return report


def _policy_from_run(args) -> dict:
    import torch

    import frdiff
    from workbench.models.zoo import load_pipeline
    from workbench.record.store import FeatureStore, StoreError

    if not args.file:
        raise UserError("policy from-run needs the run folder written by `record`")
    try:
        store = FeatureStore.open(args.file)
    except (FileNotFoundError, ValueError, StoreError) as exc:
        raise UserError(str(exc)) from None
    manifest = store.manifest
    if not store.complete:
        raise UserError(f"the run in {args.file} is incomplete ({store.steps_done} of {manifest['steps']} steps)")
    pipe = load_pipeline(args.model or manifest["model"]["id"])
    steps = len(store.timesteps)
    if args.target_compute is not None:
        return _planned_from_run(args, pipe, store)
    rel = {}
    for block in store.blocks:
        stats = store.stats(block)
        rel[block] = torch.as_tensor(stats["rel_l1"]).double().reshape(steps, -1).mean(1)
    try:
        policy = frdiff.threshold_policy(frdiff.denoiser_of(pipe), rel, steps, args.threshold,
                                         scheduler=manifest["scheduler"]["name"], source=str(args.file),
                                         mix=args.mix)
    except (ValueError, frdiff.PolicyError) as exc:
        raise _policy_error(exc) from None
    policy.save(args.out)
    return {"out": args.out, "blocks": len(policy.blocks), "steps": steps, "threshold": args.threshold,
            "keyframes_per_block": policy.keyframes.sum(1).tolist(), "denoiser_calls": policy.denoiser_calls()}


def _planned_from_run(args, pipe, store) -> dict:
    """``policy from-run --target-compute C`` (:func:`workbench.plan.plan_from_run`)."""
    import frdiff
    from workbench.plan import plan_from_run

    if not 0 < args.target_compute <= 1:
        raise UserError(f"--target-compute must lie in (0, 1], got {args.target_compute}")
    try:
        policy, info = plan_from_run(pipe, store, args.target_compute, granularity=args.granularity or "block",
                                     candidates=args.candidates)
    except (ValueError, frdiff.PolicyError) as exc:
        raise _policy_error(exc) from None
    policy.save(args.out)
    prov = policy.provenance
    return {"out": args.out, "blocks": len(policy.blocks), "steps": policy.steps, "target_compute": args.target_compute,
            "compute_fraction": prov["compute_fraction"], "pattern": prov["pattern"],
            "computed_blocks": prov["computed_blocks"], "reuse": policy.reuse_summary(),
            "denoiser_calls": policy.denoiser_calls(), "candidates": info["candidates"]}


def cmd_run(args: argparse.Namespace) -> dict:
    import frdiff
    from workbench import distributed
    from workbench.compare import Variant, compare
    from workbench.models.train import save_grid

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.cuda_graphs == "blocks" and args.compile != "regional":
        raise UserError("--cuda-graphs blocks needs --compile regional (the graphs it captures are the compiled "
                        "blocks); --cuda-graphs step captures whole steps with or without it")
    if args.cuda_graphs:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if not str(device).startswith("cuda"):
            raise UserError(f"--cuda-graphs needs a CUDA device; this run is on {device}")
    inductor = compile_options(args, [args.compile])
    folder_out(args.out)
    if (args.policy is None) == (args.preset is None):
        raise UserError("give exactly one of --policy P.json or --preset NAME")
    if args.policy and args.steps is not None:  # refused, not silently ignored
        raise UserError(f"--steps is for presets; {args.policy} carries its own step count (change it with "
                        f"`python -m workbench policy remap {args.policy} --steps S --out P.json`)")
    seeds = parse_seeds(args.seeds)  # before the model loads: a bad list costs nothing
    pipe = load_model(args)
    classes = [s % pipe.num_classes for s in seeds] if hasattr(pipe, "num_classes") else None
    labels, options = conditions_for(args, pipe, len(seeds), classes)
    if args.policy:
        policy = _load_policy(args.policy)
        steps = policy.steps
        _check_policy_steps(pipe, policy, args.policy)
        den = frdiff.denoiser_of(pipe)
        problems = policy.problems(model_blocks=dict(frdiff.find_blocks(den)),
                                   fingerprint=frdiff.model_fingerprint(den))
        if problems:
            raise UserError("invalid policy for " + args.model + ": " + "; ".join(problems))
        name = Path(args.policy).stem
    else:
        steps = 50 if args.steps is None else args.steps
        check_steps(pipe, steps)
        policy = _preset(args, pipe, steps)
        name = args.preset + (f"-M{args.interval}" if args.preset != "none" else "") + ("-mix" if args.mix else "") \
            + (f"-{args.reuse}" if args.reuse != "hold" else "") \
            + (f"-{args.granularity}" if args.granularity else "") \
            + (f"-eps-{args.skip_reuse}" if args.skip_reuse else "") + ("-x0" if args.skip_space == "data" else "")
    sharded = distributed.is_distributed()  # under torchrun: this rank's seeds, then every rank's results joined
    if sharded and len(seeds) < distributed.context().world_size:
        raise UserError(f"{len(seeds)} seeds for {distributed.context().world_size} ranks; give each rank one at least")

    def run_shard() -> dict:
        return compare(pipe, [Variant(name, policy)], distributed.shard(labels), distributed.shard(seeds),
                       steps=steps, scheduler=args.scheduler, guidance_scale=args.guidance, repeats=args.repeats,
                       batch_size=args.batch_size, keep_images=bool(args.out) or sharded, compile=args.compile,
                       cuda_graphs=args.cuda_graphs, options=options, compile_options=inductor)

    result = distributed.together(run_shard)
    if sharded:
        result = distributed.gather_comparison(result, labels, seeds)
    v, ref = result["variants"][0], result["reference"]
    report = {k: v[k] for k in ("latency_s", "reference_latency_s", "speedup", "predicted_speedup", "denoiser_calls",
                                "psnr", "ssim", "max_abs_diff", "class_accuracy")}
    if "fd_shapes" in v:
        report["fd_shapes"] = v["fd_shapes"]
        report["reference_fd_shapes"] = ref["fd_shapes"]
    if args.compile != "off":
        report.update(compile=args.compile, cuda_graphs=args.cuda_graphs, compile_options=inductor,
                      warmup_s=v["warmup_s"],
                      reference_warmup_s=ref["warmup_s"], recompiles=result["recompiles"])
    if "class_metrics" in v:
        report["class_metrics"] = v["class_metrics"]
    report.update(model=args.model, policy=name, steps=steps, scheduler=v["scheduler"], n=len(seeds),
                  reference_class_accuracy=ref["class_accuracy"], block_reuses=v["block_reuses"],
                  reuse=policy.reuse_summary(), cache_bytes=v["cache_bytes"],
                  predicted_cache_bytes=v["predicted_cache_bytes"])
    if sharded:
        report.update(ranks=result["ranks"], latency_per_rank_s=v["latency_per_rank_s"],
                      reference_latency_per_rank_s=ref["latency_per_rank_s"])
    if args.out and distributed.is_main():  # rank 0 (or a single process) writes the files
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = max(1, int(len(seeds) ** 0.5))
        save_grid(v["images"], out / "variant.png", rows=rows)
        save_grid(ref["images"], out / "reference.png", rows=rows)
        policy.save(out / "policy.json")
        write_json(out / "result.json", report)
    if args.out:
        report["out"] = str(Path(args.out))
    if not args.json:
        for k, val in report.items():
            print(f"{k}: {val}")
    return report


def _reuse_arguments(p) -> None:
    """The keyframe placement and reuse settings of a preset (``policy make``, ``run --preset``;
    docs/policy-format.md)."""
    p.add_argument("--warmup", type=int, default=0,
                   help="compute the first W steps in full, then start the keyframe grid (uniform, reduced-nfe, "
                        "deepcache)")
    p.add_argument("--last-keyframe", action="store_true",
                   help="count the keyframe grid back from the last step, so the last step is computed "
                        "(with --warmup 2 --interval 2: TaylorSeer's schedule)")
    p.add_argument("--reuse", default="hold", choices=["hold", "taylor1", "taylor2"],
                   help="what a reusing block uses: its last keyframe value (hold, FRDiff) or a forecast from its "
                        "last 2 / 3 keyframes (taylor1 / taylor2)")
    p.add_argument("--skip-reuse", default=None, choices=["hold", "taylor1", "taylor2"],
                   help="ε at skipped steps and in score mixing: held or forecast from the last full steps "
                        "(default: --reuse)")
    p.add_argument("--skip-space", default="output", choices=["output", "data"],
                   help="hold or forecast ε_key as the denoiser output (output) or as the data prediction x̂₀ it "
                        "implies (data: for multistep solvers such as DPM-Solver++ and UniPC)")
    p.add_argument("--forecast-axis", default="step", choices=["step", "timestep"],
                   help="what forecasts extrapolate in (the same on evenly spaced timesteps)")
    p.add_argument("--cache-dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="keep caches in this dtype (default: the model's)")
    p.add_argument("--granularity", default=None, choices=["feature", "block"],
                   help="what a reusing block skips: the paper's cached part (feature, the default of the presets) "
                        "or the whole block")


def add_commands(sub) -> None:
    p = sub.add_parser("policy", help="make, validate, remap or derive (from a recorded run) an FRDiff policy")
    p.add_argument("action", choices=["make", "validate", "remap", "from-run"])
    p.add_argument("file", nargs="?", default=None, help="policy JSON (validate, remap) or run folder (from-run)")
    p.add_argument("--model", default=None,
                   help="embedded name, local folder or hub id (make: default tiny-unet; from-run: the run's model)")
    p.add_argument("--steps", type=number(int, 1, MAX_STEPS), default=None,
                   help="make: steps of the policy (default 50); remap: the new step count")
    p.add_argument("--preset", default="uniform", help="none | uniform | reduced-nfe | deepcache")
    p.add_argument("--interval", type=number(int, 1), default=2,
                   help="keyframe every M steps (uniform, reduced-nfe, deepcache)")
    p.add_argument("--mix", action="store_true", help="score mixing with the paper's defaults")
    p.add_argument("--scheduler", default="ddim", type=scheduler_arg,
                   help="scheduler the policy is for (ddim, dpmpp, euler, unipc)")
    p.add_argument("--threshold", type=number(float, 0), default=None,
                   help="from-run: accumulated relative L1 per keyframe")
    p.add_argument("--target-compute", type=number(float, 0, 1, above=True), default=None,
                   help="from-run: plan keyframes and reuse mode per block at compute ≤ this fraction of the full run")
    p.add_argument("--candidates", type=number(int, 1), default=3,
                   help="from-run --target-compute: planned candidates run on the recorded seeds to pick from")
    _reuse_arguments(p)
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--out", default=None, help="where to write the policy JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("run", help="sample with a policy and compare it with the no-reuse run from the same seeds")
    p.add_argument("--model", default="tiny-unet", help="embedded name, local diffusers folder or hub id")
    p.add_argument("--policy", default=None, help="policy JSON")
    p.add_argument("--preset", default=None, help="none | uniform | reduced-nfe | deepcache (instead of --policy)")
    p.add_argument("--interval", type=number(int, 1), default=2)
    p.add_argument("--mix", action="store_true")
    p.add_argument("--steps", type=number(int, 1, MAX_STEPS), default=None,
                   help="steps of a preset (default 50; a policy file carries its own)")
    _reuse_arguments(p)
    p.add_argument("--seeds", default="0-7", help="one image per seed: 0-7, 1,5,9 …")
    p.add_argument("--class", dest="cls", default="all", help="class name, or 'all' (seed mod classes)")
    add_condition_arguments(p)
    p.add_argument("--scheduler", default=None, type=scheduler_arg, help="ddim (default), dpmpp, euler, unipc")
    p.add_argument("--guidance", type=number(float, 0), default=None)
    p.add_argument("--repeats", type=number(int, 1), default=1,
                   help="interleaved timing rounds (median latency)")
    p.add_argument("--batch-size", type=number(int, 1), default=64,
                   help="images per pipeline call (per rank under torchrun)")
    p.add_argument("--compile", default="off", choices=["off", "regional", "full"],
                   help="regional: every block a compiled graph with its reuse rule inside; full: each step "
                        "configuration one compiled graph of the whole denoiser call (the reference: the stock model "
                        "compiled alike); one untimed round compiles first (docs/engine.md)")
    p.add_argument("--cuda-graphs", nargs="?", const="blocks", default=False, choices=["blocks", "step"],
                   help="CUDA only: blocks (the default; with --compile regional): each block's graphs replayed as "
                        "CUDA graphs; step: each distinct step configuration captured as one CUDA graph of the whole "
                        "denoiser call (any compile mode)")
    p.add_argument("--inductor-option", action="append", type=inductor_option, metavar="KEY=VALUE",
                   help="with --compile: an option of inductor's for the compiled graphs, repeatable; "
                        "cpp_wrapper=true launches their kernels from C++ (steps whose cost is kernel launches)")
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--out", default=None, help="folder for image grids, the policy and result.json")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_run)
