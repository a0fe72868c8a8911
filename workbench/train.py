"""Training of the shipped models: the two diffusion models and the shape classifier.

Recipe (the same for both denoisers): ε-prediction MSE on the procedural data, linear β schedule of 1000 steps,
AdamW with linear warm-up, gradient clipping at 1, an exponential moving average (EMA) of the weights that is what
gets shipped, classifier-free guidance training by replacing the class with the null class 10 % of the time. Data
is rendered on the training device each step from seed ``data_seed·10⁶ + step``, so a run is reproducible from its
arguments. CUDA is used when present (bf16 autocast), the CPU otherwise.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from workbench.data import CLASSES, make_shapes, to_uint8

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


def _device(cfg: TrainConfig) -> torch.device:
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))


def save_grid(images: torch.Tensor, path: Path, rows: int) -> None:
    """Write [-1, 1] images as a PNG grid with ``rows`` rows, upscaled 2× for viewing."""
    from PIL import Image

    u = to_uint8(images).numpy()
    n, h, w, c = u.shape
    cols = math.ceil(n / rows)
    grid = torch.zeros(rows * h, cols * w, c, dtype=torch.uint8).numpy()
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * h : (r + 1) * h, k * w : (k + 1) * w] = u[i]
    Image.fromarray(grid).resize((cols * w * 2, rows * h * 2), Image.NEAREST).save(path)


def train_diffusion(cfg: TrainConfig, out_dir: Path, progress: Callable[[dict], None] | None = None) -> dict:
    """Train ``cfg.model`` (an embedded diffusion architecture) and save the EMA pipeline in fp16 to ``out_dir``."""
    from workbench.zoo import build_pipeline

    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolution kernels
    pipe = build_pipeline(cfg.model, seed=cfg.seed)
    if cfg.init_from:
        from workbench.zoo import load_pipeline

        start_pipe = load_pipeline(cfg.init_from)
        for name in ("unet", "transformer", "class_encoder"):
            if getattr(pipe, name) is not None:
                getattr(pipe, name).load_state_dict(getattr(start_pipe, name).state_dict())
    trainables = [m for m in (pipe.denoiser, pipe.class_encoder) if m is not None]
    for m in trainables:
        m.to(device).train()
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
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    use_bf16 = device.type == "cuda" and cfg.bf16
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    previous = None
    if cfg.init_from and (Path(cfg.init_from) / "training.json").exists():
        previous = json.loads((Path(cfg.init_from) / "training.json").read_text())
    start = time.time()
    losses: list[float] = []
    skipped = 0
    step = 0
    best_loss, diverged = float("inf"), False

    def record() -> dict:
        recent = losses[-20:]
        return dict(config=asdict(cfg), previous_run=previous, steps_done=step + 1,
                    final_loss=sum(recent) / max(len(recent), 1), skipped_nonfinite_steps=skipped,
                    train_minutes=(time.time() - start) / 60, device=str(device),
                    device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")

    for step in range(cfg.steps):
        batch = make_shapes(cfg.batch_size, cfg.data_seed * 1_000_000 + step, device=device)
        x0, labels = batch.images, batch.labels
        drop = torch.rand(labels.shape, device=device, generator=gen) < cfg.cfg_dropout
        labels = torch.where(drop, torch.full_like(labels, null), labels)
        t = torch.randint(0, alphas.numel(), (x0.shape[0],), device=device, generator=gen)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = pipe.denoise(noisy, t, labels)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not torch.isfinite(grad_norm):  # never let one bad batch poison the weights (or the EMA)
            skipped += 1
            if skipped > 100:
                raise RuntimeError(f"training diverged: {skipped} non-finite steps; lower --lr")
            continue
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - cfg.ema_decay)
        if step % 50 == 0:
            losses.append(loss.item())
        if progress and step % 100 == 0:
            progress(dict(step=step, loss=losses[-1], elapsed_s=time.time() - start))
        if cfg.sample_every and (step + 1) % cfg.sample_every == 0:
            recent = sum(losses[-20:]) / len(losses[-20:])
            best_loss = min(best_loss, recent)
            if recent > 1.5 * best_loss:  # diverging: keep the last good checkpoint and stop
                diverged = True
                break
            _sample_grid(ema_pipe, out_dir / f"{cfg.model}-samples-{step + 1:06d}.png")
            _save(ema_pipe, out_dir / cfg.model, record())  # a checkpoint survives an interrupted run
        if cfg.time_limit_min and time.time() - start > cfg.time_limit_min * 60:
            break
    if diverged:
        return dict(record(), diverged=True, note="stopped on a rising loss; the saved checkpoint is the last good one")
    _sample_grid(ema_pipe, out_dir / f"{cfg.model}-samples-final.png")
    final = record()
    _save(ema_pipe, out_dir / cfg.model, final)
    return final


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
    from workbench.classifier import ShapeClassifier

    out_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    model = ShapeClassifier().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start = time.time()
    step = 0
    for step in range(cfg.steps):
        batch = make_shapes(cfg.batch_size, cfg.data_seed * 1_000_000 + step, device=device)
        lr = _lr_at(step, cfg) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
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
