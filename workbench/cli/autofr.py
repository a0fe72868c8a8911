"""``python -m workbench autofr``: learn a keyframe policy (Auto-FR, :mod:`frdiff.autofr`) for a shipped model, then
measure it on held-out seeds against the full run (and, with ``--baselines``, against uniform and reduced-NFE
policies from the same seeds). The sampling task is :mod:`workbench.autofr`'s."""

from __future__ import annotations

import argparse
import signal
import sys

from workbench.cli.common import (
    MAX_SEED,
    MAX_STEPS,
    UserError,
    add_condition_arguments,
    check_steps,
    conditions_for,
    device_arg,
    file_out,
    load_model,
    number,
    parse_seeds,
    prompt_list,
)


class _CancelOnInterrupt:
    """First Ctrl-C: stop after the current iteration and keep the best mask so far; second: interrupt."""

    def __init__(self):
        self.flag = False

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGINT)

        def handler(_sig, _frame):
            if self.flag:
                raise KeyboardInterrupt
            self.flag = True
            print("\nstopping after this iteration (Ctrl-C again to abort)", file=sys.stderr)

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False

    def __call__(self) -> bool:
        return self.flag


def cmd_autofr(args: argparse.Namespace) -> dict:
    import frdiff
    from frdiff.autofr import AutoFRConfig
    from workbench.autofr import BASELINES, check_prompt_pipeline, learn_for_pipeline, mask_lines, seed_ranges
    from workbench.compare import Variant, compare, measure_savings

    if not args.out:
        raise UserError("autofr needs --out P.json")
    file_out(args.out, kind="policy")  # refused before training, not after
    target = args.target_compute
    config = AutoFRConfig(gates=args.gates, granularity=args.granularity, reuse=args.reuse, target_compute=target,
                          penalty=args.penalty,
                          iterations=args.iterations, lr=args.lr, batch_size=args.batch_size, init=args.init,
                          estimator=args.estimator, checkpoint=args.checkpoint, seed=args.seed)
    problems = config.problems()
    if args.steps < 2:
        problems.append(f"--steps must be at least 2, got {args.steps}")
    if problems:
        raise UserError("; ".join(problems))
    train_seeds, val_seeds = parse_seeds(args.train_seeds), parse_seeds(args.val_seeds)
    overlap = sorted(set(train_seeds) & set(val_seeds))
    if overlap:
        raise UserError(f"validation seeds must be held out; {len(overlap)} are also training seeds "
                        f"(e.g. {overlap[0]})")
    from frdiff.autofr import DataParallel
    from workbench import distributed

    ctx = distributed.context()
    data_parallel = None
    if distributed.is_distributed():  # torchrun: one set of gates, each rank its share of every minibatch
        data_parallel = DataParallel(ctx.rank, ctx.world_size, distributed.all_reduce_sum)
        args.quiet = args.quiet or ctx.rank != 0
        if not args.no_measure and len(val_seeds) < ctx.world_size:
            raise UserError(f"{len(val_seeds)} validation seeds for {ctx.world_size} ranks; "
                            "give each rank one at least")
    pipe = load_model(args)
    check_steps(pipe, args.steps)
    pipe.set_progress_bar_config(disable=True)
    classes = [s % pipe.num_classes for s in val_seeds] if hasattr(pipe, "num_classes") else None
    labels, options = conditions_for(args, pipe, len(val_seeds), classes)  # prompt i mod P for seed i
    prompts = prompt_list(args) if options is not None else None
    if prompts is not None:
        try:
            check_prompt_pipeline(pipe)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    savings = measure_savings(pipe, condition=labels[0], options=options)
    from tqdm.auto import tqdm

    bar = tqdm(total=config.iterations, desc=f"autofr {args.model}", unit="it", file=sys.stderr,
               disable=args.quiet)

    def show(info: dict) -> None:
        bar.update(info["iteration"] + 1 - bar.n)
        bar.set_postfix(mse=f"{info['mse']:.2e}", compute=f"{info['compute_fraction']:.3f}")

    with _CancelOnInterrupt() as cancel:
        try:
            result = learn_for_pipeline(pipe, config, args.steps, train_seeds, None, args.guidance, savings, show,
                                        cancel, model_name=args.model, data_parallel=data_parallel, prompts=prompts,
                                        options=options)
        finally:
            bar.close()
    policy = result.policy
    prov = policy.provenance
    report = {"model": args.model, "steps": args.steps, "gates": args.gates, "granularity": args.granularity,
              "reuse": args.reuse,
              "estimator": args.estimator,
              "target_compute": target, "compute_fraction": prov["compute_fraction"],
              "predicted_speedup": prov["predicted_speedup"], "iterations_run": len(result.history),
              "train_seconds": result.seconds,
              "cancelled": result.cancelled, "notes": prov["notes"], **mask_lines(policy)}
    if not args.no_measure:
        variants = [Variant("autofr", policy)]
        if args.baselines:
            den = frdiff.denoiser_of(pipe)
            for preset, m, mix in BASELINES:
                name = f"{preset} M={m}" + (" + mixing" if mix else "")
                variants.append(Variant(name, frdiff.make_preset(preset, den, args.steps, interval=m, mix=mix)))
        bar = tqdm(total=len(variants) + 1, desc="measure", unit="run", file=sys.stderr, disable=args.quiet)
        try:  # under torchrun each rank measures its share of the validation seeds; the results are joined
            res = distributed.together(lambda: compare(
                pipe, variants, distributed.shard(labels), distributed.shard(val_seeds), steps=args.steps,
                scheduler=None, guidance_scale=args.guidance, repeats=args.repeats,
                progress=lambda info: bar.update(info["done"] - bar.n), keep_images=data_parallel is not None,
                options=options))
            if data_parallel is not None:
                res = distributed.gather_comparison(res, labels, val_seeds)
        finally:
            bar.close()
        keys = ("psnr", "ssim", "max_abs_diff", "class_accuracy", "fd_shapes", "predicted_speedup", "speedup",
                "latency_s", "reference_latency_s", "denoiser_calls")
        rows = [{"name": v["name"], **{k: v[k] for k in keys if k in v}, "compute_fraction": 1 / v["predicted_speedup"]}
                for v in res["variants"]]
        mine = rows[0]
        prov["validation"] = {"psnr": mine["psnr"], "ssim": mine["ssim"], "n": len(val_seeds),
                              "seeds": seed_ranges(val_seeds), "measured_speedup": mine["speedup"],
                              "class_accuracy": mine["class_accuracy"], "through": "workbench.compare (frdiff.apply)"}
        report.update(val_psnr=mine["psnr"], val_ssim=mine["ssim"], measured_speedup=mine["speedup"],
                      val_class_accuracy=mine["class_accuracy"], val_fd_shapes=mine.get("fd_shapes"),
                      val_seeds=seed_ranges(val_seeds), reference={k: res["reference"][k] for k in
                                                               ("latency_s", "class_accuracy", "fd_shapes")
                                                               if k in res["reference"]})
        if args.baselines:
            report["variants"] = rows
    if distributed.is_main():
        policy.save(args.out)
    report["out"] = args.out
    if data_parallel is not None:
        report["ranks"] = ctx.world_size
    report["loss_curve"] = prov["loss_curve"]
    if not args.json:
        for k in ("model", "gates", "granularity", "reuse", "target_compute", "compute_fraction", "predicted_speedup",
                  "measured_speedup", "val_psnr", "val_ssim", "iterations_run", "train_seconds", "step_mask", "out"):
            if k in report:
                val = report[k]
                print(f"{k}: {val:.4g}" if isinstance(val, float) else f"{k}: {val}")
        for note in report["notes"]:
            print(f"note: {note}")
        for row in report.get("variants", [])[1:]:
            print(f"  {row['name']:22s} psnr {row['psnr']:6.2f}  compute {row['compute_fraction']:.3f}  "
                  f"speedup {row['speedup']:.2f} (predicted {row['predicted_speedup']:.2f})")
    return report


def target_compute(text: str) -> float | None:
    """``--target-compute``: a compute fraction in (0, 1], or ``none`` for the paper's fixed penalty."""
    if text.strip().lower() == "none":
        return None
    return number(float, 0, 1, above=True)(text)


def add_commands(sub) -> None:
    p = sub.add_parser("autofr", help="learn a keyframe policy by gradient descent through the sampler (Auto-FR)")
    p.add_argument("--model", default="tiny-unet", help="embedded name or local diffusers folder")
    add_condition_arguments(p)
    p.add_argument("--steps", type=number(int, 1, MAX_STEPS), default=50)
    p.add_argument("--gates", choices=["step", "block"], default="step",
                   help="gates per step (the paper's, shared by all blocks) or per block × step")
    p.add_argument("--granularity", choices=["feature", "block"], default="feature",
                   help="what a reusing block skips: its timestep-independent part (paper) or the whole block")
    p.add_argument("--reuse", choices=["hold", "taylor1", "taylor2"], default="hold",
                   help="what a reusing block uses: its last keyframe value (hold) or a forecast from the last "
                        "2 / 3 keyframes (taylor1 / taylor2), learned with that mode in place")
    p.add_argument("--target-compute", type=target_compute, default=0.6,
                   help="compute fraction to steer to (1 = full), or 'none' for the paper's fixed penalty")
    p.add_argument("--penalty", type=number(float, 0), default=1e-3,
                   help="the paper's penalty weight (--target-compute none)")
    p.add_argument("--train-seeds", default="0-31", help="training images: seeds (class = seed mod classes)")
    p.add_argument("--val-seeds", default="100-163", help="held-out images for validation")
    p.add_argument("--iterations", type=number(int, 1), default=20, help="Adam steps")
    p.add_argument("--lr", type=number(float, 0, above=True), default=5e-2)
    p.add_argument("--batch-size", type=number(int, 1), default=2, help="images per iteration")
    p.add_argument("--init", choices=["uniform", "full"], default="uniform",
                   help="start from evenly spaced keyframes at the target's cost, or from all steps computed")
    p.add_argument("--estimator", choices=["round", "budget"], default="round",
                   help="forward mask while training: round(σ(g)) (paper) or the budget projection of the logits")
    p.add_argument("--checkpoint", action="store_true", help="gradient checkpointing per step (less memory)")
    p.add_argument("--guidance", type=number(float, 0), default=None)
    p.add_argument("--seed", type=number(int, 0, MAX_SEED), default=0, help="order of the training images")
    p.add_argument("--baselines", action="store_true",
                   help="also measure uniform M=2,3,4 (± mixing) and reduced-nfe M=2,3,4 on the validation seeds")
    p.add_argument("--no-measure", action="store_true",
                   help="skip the validation run (no PSNR or measured speedup)")
    p.add_argument("--repeats", type=number(int, 1), default=1,
                   help="interleaved timing rounds on the validation seeds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--out", default=None, help="where to write the policy JSON")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_autofr)
