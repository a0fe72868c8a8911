"""Training of the shipped models: the two diffusion models and the shape classifier.

Recipe (the same for both denoisers): ε-prediction MSE on the procedural data, linear β schedule of 1000 steps,
AdamW with linear warm-up, gradient clipping at 1, an exponential moving average (EMA) of the weights that is what
gets shipped, classifier-free guidance training by replacing the class with the null class 10 % of the time. Data
is rendered on the training device each step from seed ``data_seed·10⁶ + step·world_size + rank``, so a run is
reproducible from its arguments. CUDA is used when present (bf16 autocast), the CPU otherwise.

Options used by the later runs (see the model cards):

- ``loss_weighting="min-snr"``: Min-SNR-γ weighting (Hang et al., 2023, arXiv 2303.09556). For ε-prediction the
  per-sample weight is ``min(SNR(t), γ) / SNR(t)``, with ``SNR(t) = ᾱ_t / (1 - ᾱ_t)``: low-noise steps, whose ε loss
  is easy and whose gradients dominate, count less; high-noise steps, where the shape is decided, keep weight 1.
- ``lr_schedule="cosine"``: after warm-up the learning rate follows a half cosine from its peak to 0 at the last
  step. With a time limit, the number of steps is fitted to it once, from the measured speed of steps 100-300, and
  recorded (``schedule_steps``), so a run can be repeated with ``--steps`` alone.
- ``teacher`` / ``distill_weight``: the target becomes ``(1 - w)·ε + w·ε_teacher(x_t, t, class)``, the teacher
  being another trained pipeline on the same data and classes (the shipped tiny-unet for the tiny-dit). Since
  ``(1-w)‖p-ε‖² + w‖p-ε_T‖² = ‖p-((1-w)ε + w·ε_T)‖² + const``, this is the mixture of the two losses; the teacher's
  prediction is the conditional mean the student would otherwise have to learn from single noisy draws, so its
  gradients are far less noisy. The student can at best match the teacher where w = 1.
- torchrun: ``torchrun --nproc_per_node N -m workbench train ...`` trains data-parallel. Each rank renders its own
  batch (``--batch-size`` is per rank), gradients are averaged with one all-reduce per step, and rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from workbench.models.data import CLASSES, make_shapes, to_uint8

CLASSIFIER_VAL_SEED = 800_000  # held-out images for the classifier's accuracy; never a training seed


@dataclass
class TrainConfig:
    """Arguments of one training run (stored in the model card)."""

    model: str  # tiny-unet | tiny-dit | shape-classifier
    steps: int = 20_000  # optimiser steps; the run stops earlier if time_limit_min runs out
    batch_size: int = 256
    lr: float = 3e-4  # peak learning rate after warm-up
    warmup: int = 500
    weight_decay: float = 0.0
    ema_decay: float = 0.999  # shipped weights are the EMA; higher = smoother but slower to follow
    cfg_dropout: float = 0.1  # probability of the null class, so one model serves cond and uncond (CFG)
    seed: int = 0  # weight initialisation and noise
    data_seed: int = 1
    sample_every: int = 2000  # steps between sample grids written to out_dir
    time_limit_min: float | None = None
    device: str | None = None
    init_from: str | None = None  # a pipeline folder whose weights start the run (continued training)
    bf16: bool = True  # bf16 autocast on CUDA: faster; fp32 (TF32 matmuls) is the steadier choice
    lr_schedule: str = "constant"  # constant | cosine (to 0 at the last step, after warm-up)
    loss_weighting: str = "none"  # none | min-snr
    min_snr_gamma: float = 5.0
    teacher: str | None = None  # a pipeline (name or folder) whose ε predictions become part of the target
    distill_weight: float = 0.0  # share of the teacher's ε in the target (the rest is the true noise)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {self.loss_weighting!r}")
        if not self.min_snr_gamma > 0:  # also refuses NaN
            raise ValueError(f"min_snr_gamma must be positive, got {self.min_snr_gamma}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must lie in [0, 1], got {self.distill_weight}")
        if self.distill_weight > 0 and not self.teacher:
            raise ValueError("distill_weight > 0 needs a teacher")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if self.warmup < 0 or self.sample_every < 0:
            raise ValueError(f"warmup and sample_every must be 0 or more, got {self.warmup} and {self.sample_every}")
        if self.time_limit_min is not None and not (math.isfinite(self.time_limit_min) and self.time_limit_min > 0):
            raise ValueError(f"time_limit_min must be a positive number of minutes, got {self.time_limit_min}")


LR_SCHEDULES = ("constant", "cosine")
LOSS_WEIGHTINGS = ("none", "min-snr")


def _device(cfg: TrainConfig) -> torch.device:
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _lr_at(step: int, cfg: TrainConfig, total_steps: int | None = None) -> float:
    """Learning rate at ``step``: linear warm-up, then constant or a half cosine to 0 at ``total_steps``."""
    warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
    if cfg.lr_schedule == "constant":
        return cfg.lr * warm
    total = total_steps or cfg.steps
    span = max(total - cfg.warmup, 1)
    progress = min(max(step - cfg.warmup, 0) / span, 1.0)
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * progress))


def loss_weights(alphas_cumprod_t: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Per-sample weights of the ε-MSE for the noise levels ``ᾱ_t`` (ones unless Min-SNR-γ is chosen)."""
    if cfg.loss_weighting == "none":
        return torch.ones_like(alphas_cumprod_t)
    snr = alphas_cumprod_t / (1 - alphas_cumprod_t)
    return snr.clamp(max=cfg.min_snr_gamma) / snr


def save_grid(images: torch.Tensor, path: Path, rows: int) -> None:
    """Write [-1, 1] images as a PNG grid with ``rows`` rows, upscaled 2× for viewing (atomically: a failed write
    leaves an earlier file at ``path`` as it was)."""
    from PIL import Image

    u = to_uint8(images).numpy()
    n, h, w, c = u.shape
    cols = math.ceil(n / rows)
    grid = torch.zeros(rows * h, cols * w, c, dtype=torch.uint8).numpy()
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = u[i]
    from workbench.files import save_image

    save_image(Image.fromarray(grid).resize((cols * w * 2, rows * h * 2), Image.NEAREST), path)


def train_diffusion(cfg: TrainConfig, out_dir: Path, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``cfg.model`` (an embedded diffusion architecture) and save the EMA pipeline in fp16 to ``out_dir``,
    with its policy metadata (:mod:`workbench.models.meta`) at the end.

    Under torchrun every rank calls this; gradients are averaged across ranks and only rank 0 writes files.
    """
    from workbench import distributed
    from workbench.models.zoo import build_pipeline

    ctx = distributed.context()
    rank, world = (ctx.rank, ctx.world_size) if ctx else (0, 1)
    main = rank == 0
    device = ctx.device if ctx and ctx.device.type == "cuda" else _device(cfg)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolution kernels
    pipe = build_pipeline(cfg.model, seed=cfg.seed)
    if cfg.init_from:
        from workbench.models.zoo import load_pipeline

        start_pipe = load_pipeline(cfg.init_from)
        for name in ("unet", "transformer", "class_encoder"):
            if getattr(pipe, name) is not None:
                getattr(pipe, name).load_state_dict(getattr(start_pipe, name).state_dict())
    trainables = [m for m in (pipe.denoiser, pipe.class_encoder) if m is not None]
    for m in trainables:
        m.to(device).train()
    teacher = _load_teacher(cfg, pipe, device) if cfg.distill_weight > 0 else None
    if main:  # only once the inputs (start weights, teacher) have loaded: a bad argument leaves nothing behind
        out_dir.mkdir(parents=True, exist_ok=True)
    if pipe.transformer is not None:
        # diffusers' DiT drops labels inside every block independently in train mode; we drop once, explicitly.
        for mod in pipe.transformer.modules():
            if hasattr(mod, "dropout_prob") and hasattr(mod, "token_drop"):
                mod.dropout_prob = 0.0
    ema_pipe = copy.deepcopy(pipe)  # the shipped weights: an exponential moving average of the trained ones
    ema_modules = [m for m in (ema_pipe.denoiser, ema_pipe.class_encoder) if m is not None]
    for m in ema_modules:
        m.train(False).requires_grad_(False)
    params = [p for m in trainables for p in m.parameters()]
    ema_params = [p for m in ema_modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    alphas = DDPMScheduler.from_config(pipe.scheduler.config).alphas_cumprod.to(device)
    null = pipe.null_class
    gen = torch.Generator(device=device).manual_seed(cfg.seed + rank)
    use_bf16 = device.type == "cuda" and cfg.bf16
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    previous = None
    if cfg.init_from and (Path(cfg.init_from) / "training.json").exists():
        previous = json.loads((Path(cfg.init_from) / "training.json").read_text())
    start = t100 = time.time()  # t100: when step 100 began (the speed that fits the cosine is measured from it)
    losses: list[float] = []
    skipped = 0
    step = completed = 0
    total_steps = cfg.steps
    fit_to_time = cfg.lr_schedule == "cosine" and cfg.time_limit_min is not None
    best_loss, diverged = float("inf"), False

    def record() -> dict:
        recent = losses[-20:]
        return dict(config=asdict(cfg), previous_run=previous, steps_done=completed, schedule_steps=total_steps,
                    world_size=world, final_loss=sum(recent) / len(recent) if recent else None,
                    optimizer_steps=completed - skipped, skipped_nonfinite_steps=skipped,
                    train_minutes=(time.time() - start) / 60, device=str(device),
                    device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")

    def agreed(value: float) -> float:
        """Rank 0's ``value`` on every rank (so that decisions taken from clocks and losses are the same)."""
        if world == 1:
            return value
        t = torch.tensor([value if main else 0.0], dtype=torch.float64, device=distributed.context().device)
        return float(distributed.all_reduce_sum(t).item())

    for step in range(10**9):
        if step >= total_steps:
            break
        if fit_to_time and step == 300:  # fit the cosine's length to the time limit from the measured speed
            rate = 200 / max(time.time() - t100, 1e-6)
            left = cfg.time_limit_min * 60 - (time.time() - start)
            total_steps = int(agreed(min(cfg.steps, 300 + int(0.95 * rate * left))))
        if step == 100:
            t100 = time.time()
        batch = make_shapes(cfg.batch_size, cfg.data_seed * 1_000_000 + step * world + rank, device=device)
        x0, labels = batch.images, batch.labels
        drop = torch.rand(labels.shape, device=device, generator=gen) < cfg.cfg_dropout
        labels = torch.where(drop, torch.full_like(labels, null), labels)
        t = torch.randint(0, alphas.numel(), (x0.shape[0],), device=device, generator=gen)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg, total_steps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = pipe.denoise(noisy, t, labels)
        target = noise
        if teacher is not None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                taught = teacher.denoise(noisy, t, labels).float()
            target = torch.lerp(noise, taught, cfg.distill_weight)
        per_sample = F.mse_loss(pred.float(), target, reduction="none").mean(dim=(1, 2, 3))
        loss = (loss_weights(alphas[t], cfg) * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            # one all-reduce of every gradient flattened; the averaged slices become the gradients (views, no copy)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = distributed.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / world
            for p, g in zip(params, flat.split([g.numel() for g in grads]), strict=True):
                p.grad = g.view_as(p)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not torch.isfinite(grad_norm):  # never let one bad batch poison the weights (or the EMA)
            skipped += 1
            if skipped > 100:
                raise RuntimeError(f"training diverged: {skipped} non-finite steps; lower --lr")
            completed += 1
            continue
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - cfg.ema_decay)
        completed += 1
        if step % 50 == 0:
            losses.append(float(distributed.all_reduce_sum(loss.detach().double()).item()) / world)
        if progress and main and step % 100 == 0 and losses:
            progress(dict(step=step, loss=losses[-1], elapsed_s=time.time() - start))
        if cfg.sample_every and (step + 1) % cfg.sample_every == 0 and losses:
            recent = sum(losses[-20:]) / len(losses[-20:])
            best_loss = min(best_loss, recent)
            if recent > 1.5 * best_loss:  # diverging: keep the last good checkpoint and stop
                diverged = True
                break
            if main:
                _sample_grid(ema_pipe, out_dir / f"{cfg.model}-samples-{step + 1:06d}.png")
                _save(ema_pipe, out_dir / cfg.model, record())  # a checkpoint survives an interrupted run
        if cfg.time_limit_min and step % 50 == 0 and agreed(time.time() - start > cfg.time_limit_min * 60):
            break
    if diverged:
        return dict(record(), diverged=True, note="stopped on a rising loss; the saved checkpoint is the last good one")
    final = record()
    if world > 1:  # the replicas must have stayed identical: compare fingerprints of the shipped weights
        prints = distributed.all_gather_tensor(_fingerprint(ema_params).to(distributed.context().device))
        final["replicas_identical"] = all(torch.equal(prints[0], p) for p in prints[1:])
    if main:
        if cfg.sample_every:
            _sample_grid(ema_pipe, out_dir / f"{cfg.model}-samples-final.png")
        _save(ema_pipe, out_dir / cfg.model, final)
        from workbench.models import meta

        meta.write(out_dir / cfg.model)  # what `policy make` reads instead of loading the model (issue 21)
    distributed.barrier()
    return final


def _load_teacher(cfg: TrainConfig, pipe, device: torch.device):
    """The teacher pipeline, frozen on ``device``; it must share the student's image shape and classes."""
    from workbench.models.zoo import load_pipeline

    teacher = load_pipeline(cfg.teacher)
    if (teacher.num_classes, teacher.sample_size, teacher.denoiser.config.in_channels) != (
            pipe.num_classes, pipe.sample_size, pipe.denoiser.config.in_channels):
        raise ValueError(f"teacher {cfg.teacher!r} does not match {cfg.model}: it needs the same classes, image size "
                         "and channels")
    for m in (teacher.denoiser, teacher.class_encoder):
        if m is not None:
            m.to(device=device, dtype=torch.float32).train(False).requires_grad_(False)
    return teacher


def _fingerprint(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Two float64 numbers that differ when any weight differs (in practice): Σw and Σ w·k over a fixed index."""
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    k = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
    return torch.stack([flat.sum(), (flat * k.remainder(997)).sum()])


def _save(pipe, save_dir: Path, record: dict) -> None:
    """Write the pipeline in fp16 safetensors plus ``training.json`` (the run's arguments and results)."""
    copy.deepcopy(pipe).to(torch.float16).save_pretrained(save_dir, safe_serialization=True)
    (save_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")


@torch.no_grad()
def _sample_grid(pipe, path: Path) -> None:
    """6 classes × 6 samples, 50 DDIM steps."""
    labels = [c for c in range(len(CLASSES)) for _ in range(6)]
    gens = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    images = pipe(labels, num_inference_steps=50, generator=gens, output_type="pt").images
    save_grid(images, path, rows=len(CLASSES))


def train_classifier(cfg: TrainConfig, out_dir: Path, progress: Callable[[dict], None] | None = None) -> dict:
    """Train the shape classifier and save it (fp32 safetensors) with its held-out accuracy."""
    from workbench.models.classifier import ShapeClassifier

    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    model = ShapeClassifier().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.time()
    step = 0
    for step in range(cfg.steps):
        batch = make_shapes(cfg.batch_size, cfg.data_seed * 1_000_000 + step, device=device)
        # the classifier's own schedule: warm-up times one cosine over all steps (whatever --lr-schedule says)
        lr = _lr_at(step, replace(cfg, lr_schedule="constant")) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(batch.images), batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and step % 100 == 0:
            progress(dict(step=step, loss=loss.item(), elapsed_s=time.time() - start))
        if cfg.time_limit_min and time.time() - start > cfg.time_limit_min * 60:
            break
    model.train(False)
    val = make_shapes(10_000, CLASSIFIER_VAL_SEED, device=device)
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x in val.images.split(1000)])
    accuracy = float((pred == val.labels).float().mean())
    save_dir = out_dir / "shape-classifier"
    model.save_pretrained(save_dir, safe_serialization=True)
    record = dict(config=asdict(cfg), steps_done=step + 1, heldout_accuracy=accuracy, heldout_images=10_000,
                  heldout_seed=CLASSIFIER_VAL_SEED, train_minutes=(time.time() - start) / 60, device=str(device))
    (save_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
