"""CLI commands about the models themselves: ``models``, ``sample``, ``train``, ``blocks`` and ``meta``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from workbench.cli.common import (
    MAX_SEED,
    MAX_STEPS,
    UserError,
    add_condition_arguments,
    check_steps,
    conditions_for,
    device_arg,
    example_call,
    file_out,
    folder_out,
    load_model,
    number,
    scheduler_arg,
)
from workbench.models.catalog import CLASSES

MAX_SAMPLES = 10_000  # images of one `sample` run (held in memory for the grid and the judge)
SAMPLE_BATCH = 64  # images per pipeline call; a progress bar from more than one call on


def cmd_models(args: argparse.Namespace) -> dict:
    from workbench.models.catalog import list_models

    rows = list_models()
    if not args.json:
        for r in rows:
            size = f"{r['parameters'] / 1e6:6.2f} M params" if r["parameters"] else "     ? params"
            status = "weights present" if r["weights"] else "NO WEIGHTS (train it: python -m workbench train ...)"
            print(f"{r['name']:<10} {r['architecture']:<5} {size}  {status}")
            print(f"           {r['description']}")
    return {"models": rows}


def cmd_sample(args: argparse.Namespace) -> dict:
    from workbench.models.schedulers import scheduler_name
    from workbench.models.train import save_grid
    from workbench.sampling import judge, sample

    if args.n < 1:
        raise UserError("--n must be at least 1")
    if args.n > MAX_SAMPLES:
        raise UserError(f"--n {args.n} is more than {MAX_SAMPLES} images in one run; sample in several runs "
                        f"(--seed S starts each at seed S)")
    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    file_out(args.out, example="grid.png", kind="image")
    pipe = load_model(args)
    check_steps(pipe, args.steps)
    classes = [i % pipe.num_classes for i in range(args.n)] if hasattr(pipe, "num_classes") else None
    labels, options = conditions_for(args, pipe, args.n, classes)
    seeds = list(range(args.seed, args.seed + args.n))
    from tqdm.auto import tqdm

    bar = tqdm(total=args.n, desc="sample", unit="img", file=sys.stderr, disable=args.n <= SAMPLE_BATCH)
    try:
        result = sample(pipe, labels, seeds, steps=args.steps, guidance_scale=args.guidance, scheduler=args.scheduler,
                        batch_size=SAMPLE_BATCH, progress=lambda done, total: bar.update(done - bar.n),
                        options=options)
    except ValueError as exc:  # a size or scheduler the pipeline refuses
        raise UserError(str(exc)) from None
    finally:
        bar.close()
    default_guidance = getattr(pipe.config, "default_guidance_scale", None)
    if default_guidance is None:  # a diffusers text-to-image pipeline: its __call__'s own default
        import inspect

        param = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
        default_guidance = param.default if param is not None and param.default is not param.empty else None
    condition = {"prompts": sorted(set(labels), key=labels.index)} if options is not None else {"cls": args.cls}
    report = dict(model=args.model, **condition, n=args.n, steps=args.steps, seed=args.seed,
                  scheduler=args.scheduler or scheduler_name(pipe.scheduler),
                  guidance_scale=args.guidance if args.guidance is not None else default_guidance,
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


def trained_files(folder: Path) -> list[str]:
    """What of a trained model ``folder`` holds (a pipeline's model_index.json, a model's config.json and weights,
    training.json): the files a training run into it would replace. The folder a model is written to is ``--out``
    itself for tiny-sd and the scene judge, ``--out/<model>`` for the others."""
    if not folder.is_dir():
        return []
    names = ("model_index.json", "training.json", "config.json")
    return sorted(p.name for p in folder.iterdir() if p.name in names or p.suffix == ".safetensors")


def cmd_train(args: argparse.Namespace) -> dict:
    from workbench import distributed
    from workbench.models.train import TrainConfig, train_classifier, train_diffusion

    try:
        cfg = TrainConfig(model=args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          warmup=args.warmup, seed=args.seed, data_seed=args.data_seed,
                          sample_every=args.sample_every, time_limit_min=args.time_limit_min, device=args.device,
                          init_from=args.init_from, bf16=not args.fp32, lr_schedule=args.lr_schedule,
                          loss_weighting=args.loss_weighting, min_snr_gamma=args.min_snr_gamma,
                          ema_decay=args.ema_decay, teacher=args.teacher, distill_weight=args.distill_weight)
    except ValueError as exc:
        distributed.refuse(str(exc))
    one_process = {"shape-classifier": "the shape classifier", "scene-judge": "the scene judge", "tiny-sd": "tiny-sd"}
    if cfg.model in one_process and distributed.is_distributed():
        distributed.refuse(f"{one_process[cfg.model]} trains in one process; run it without torchrun")
    if args.model == "tiny-sd" and args.init_from and not (Path(args.init_from) / "model_index.json").is_file():
        raise UserError(f"--init-from {args.init_from} is not a tiny-sd folder (no model_index.json in it)")
    folder_out(args.out)
    out = Path(args.out)
    target = out / args.model if args.model in ("tiny-unet", "tiny-dit", "shape-classifier") else out
    held = trained_files(target)
    if held and not args.overwrite:  # before any training: its first checkpoint would replace them
        raise UserError(f"{target} already holds a trained model ({', '.join(held[:3])}); train into a new "
                        f"folder, or pass --overwrite to replace it (checkpoints are written there as training goes)")
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, desc=f"train {args.model}", unit="step", file=sys.stderr,
               disable=not distributed.is_main())

    def show(info: dict) -> None:
        bar.update(info["step"] + 1 - bar.n)
        bar.set_postfix(loss=f"{info['loss']:.4f}")

    try:
        if args.model == "shape-classifier":
            record = train_classifier(cfg, out, progress=show)
        elif args.model == "scene-judge":
            from workbench.models.train_sd import train_scene_judge

            record = train_scene_judge(cfg, out, progress=show)
        elif args.model == "tiny-sd":
            from workbench.models.train_sd import train_tiny_sd

            record = train_tiny_sd(cfg, out, vae_minutes=args.vae_minutes, progress=show)
        else:
            record = train_diffusion(cfg, out, progress=show)
    finally:
        bar.close()
    if not args.json:
        print(json.dumps(record, indent=2))
    return record


def cmd_scenes(args: argparse.Namespace) -> dict:
    """Print evaluation captions of the scene grammar, one per line (the prompts tiny-sd is judged on)."""
    from workbench.models.scenes import eval_prompts

    if not 1 <= args.n <= MAX_SAMPLES:
        raise UserError(f"--n must lie in 1..{MAX_SAMPLES}")
    prompts = eval_prompts(args.n, args.seed)
    if not args.json:
        print("\n".join(prompts))
    return {"prompts": prompts, "n": args.n, "seed": args.seed}


def cmd_blocks(args: argparse.Namespace) -> dict:
    from frdiff.blocks import capture_denoiser_call, denoiser_of, discover_blocks

    pipe = load_model(args)
    call_args, call_kwargs = capture_denoiser_call(pipe, example_call(pipe))
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


def cmd_meta(args: argparse.Namespace) -> dict:
    """Write (or with ``--check`` compare) the policy metadata of a model folder (:mod:`workbench.models.meta`)."""
    from workbench.models import meta

    folder = meta.model_folder(args.model)
    if folder is None:
        raise UserError(f"meta needs an embedded model or a local diffusers folder, got {args.model!r} (hub models: "
                        f"download them and pass the folder)")
    path = folder / meta.FILE
    if args.check:
        current, reasons = meta.read(folder)
        if current is not None:
            pipe = load_model(argparse.Namespace(model=args.model, device="cpu"))
            fresh = meta.derive(pipe, folder)
            if current != fresh:
                differ = sorted(k for k in set(current) | set(fresh) if current.get(k) != fresh.get(k))
                reasons = [f"{path} differs from the loaded model in: {', '.join(differ)}"]
        if reasons:
            raise UserError(f"the policy metadata of {args.model} is not current ({'; '.join(reasons)}); "
                            f"rewrite it: python -m workbench meta --model {args.model}")
        report = {"model": args.model, "file": str(path), "current": True}
    else:
        pipe = load_model(argparse.Namespace(model=args.model, device="cpu"))
        meta.write(folder, pipe)
        report = {"model": args.model, "file": str(path), "written": True}
    if not args.json:
        for k, v in report.items():
            print(f"{k}: {v}")
    return report


def add_commands(sub) -> None:
    p = sub.add_parser("models", help="list the embedded models with parameter counts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("sample", help="sample a grid of images and judge them with the shape classifier")
    p.add_argument("--model", default="tiny-unet", help="embedded name, local diffusers folder or hub id")
    p.add_argument("--class", dest="cls", default="all",
                   help=f"class name or index ({', '.join(CLASSES)}), or 'all' to cycle through classes")
    add_condition_arguments(p)
    p.add_argument("--n", type=int, default=16,
                   help=f"number of images (FD-shapes from 64 on; at most {MAX_SAMPLES})")
    p.add_argument("--steps", type=number(int, 1, MAX_STEPS), default=50, help="sampling steps")
    p.add_argument("--seed", type=number(int, 0, MAX_SEED - MAX_SAMPLES), default=0,
                   help="first seed; image i uses seed + i")
    p.add_argument("--guidance", type=number(float, 0), default=None,
                   help="CFG scale (default: the model's shipped value)")
    p.add_argument("--scheduler", default=None, type=scheduler_arg, help="ddim (default), dpmpp, euler, unipc, ddpm")
    p.add_argument("--device", type=device_arg, default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", default=None, help="write the image grid to this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train", help="train an embedded model or the shape classifier (CUDA when present)")
    p.add_argument("--model", required=True,
                   choices=["tiny-unet", "tiny-dit", "tiny-sd", "shape-classifier", "scene-judge"])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per step (per process under torchrun)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=500, help="linear warm-up steps")
    p.add_argument("--seed", type=number(int, 0, MAX_SEED), default=0)
    p.add_argument("--data-seed", type=number(int, 0, MAX_SEED), default=1)
    p.add_argument("--sample-every", type=int, default=2000,
                   help="steps between sample grids (0: never)")
    p.add_argument("--time-limit-min", type=float, default=None,
                   help="stop after this many minutes")
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--fp32", action="store_true", help="train in fp32 (TF32) instead of bf16 autocast on CUDA")
    p.add_argument("--init-from", default=None, help="pipeline folder to continue training from")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="after warm-up: constant, or a half cosine to 0 at the last step (with --time-limit-min the "
                        "step count is fitted to the time from the measured speed)")
    p.add_argument("--loss-weighting", default="none", choices=["none", "min-snr"],
                   help="per-noise-level weights of the ε loss: none, or Min-SNR-γ (arXiv 2303.09556)")
    p.add_argument("--min-snr-gamma", type=float, default=5.0, help="γ of Min-SNR-γ weighting")
    p.add_argument("--ema-decay", type=float, default=0.999,
                   help="decay of the weights' moving average (shipped)")
    p.add_argument("--teacher", default=None, help="pipeline (embedded name or folder) to distil from")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="share of the teacher's predicted noise in the target, 0-1 (needs --teacher)")
    p.add_argument("--vae-minutes", type=number(float, 0), default=2.0,
                   help="tiny-sd: minutes of the VAE stage before the text encoder and UNet (skipped with --init-from)")
    p.add_argument("--out", required=True, help="folder for the trained model, grids and training.json")
    p.add_argument("--overwrite", action="store_true",
                   help="train into a folder that already holds a model, replacing it at the first checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("scenes", help="print N scene captions (tiny-sd's evaluation prompts: shape i mod 6, the "
                                      "other attributes drawn from --seed), one per line, for --prompts-file")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--seed", type=number(int, 0, MAX_SEED), default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_scenes)

    p = sub.add_parser("blocks", help="table of the denoiser's hookable blocks with shapes and FLOP shares")
    p.add_argument("--model", default="tiny-unet", help="embedded name, local diffusers folder or hub id")
    p.add_argument("--device", type=device_arg, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_blocks)

    p = sub.add_parser("meta", help="write the policy metadata of a model folder (policy-meta.json: what `policy "
                                    "make` reads instead of loading the model), or --check it")
    p.add_argument("--model", required=True, help="embedded name or local diffusers folder")
    p.add_argument("--check", action="store_true",
                   help="compare the file with the loaded model instead of writing it (exit 2 when not current)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_meta)
