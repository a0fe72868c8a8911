"""Training of `tiny-sd` and of its scene judge (``python -m workbench train --model tiny-sd|scene-judge``, on a GPU;
docs/models/tiny-sd.md, docs/models/scene-judge.md). The models themselves, their configs and the offline tokenizer
are in :mod:`workbench.models.tiny_sd` and :mod:`workbench.models.scene_judge`; this module trains them, with the
shared helpers of :mod:`workbench.models.train` (learning-rate schedule, Min-SNR weights, device choice)."""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.models.scene_judge import VAL_SEED, SceneJudge, _run
from workbench.models.scenes import ATTRIBUTES, make_scenes
from workbench.models.tiny_sd import SCHEDULER_CONFIG, VAE_KL_WEIGHT, build_tiny_sd, caption_index, caption_table
from workbench.models.train import _device, _lr_at, loss_weights

POOL_CHUNK = 8192  # scenes rendered (and encoded) at a time when a pool is built


def render_pool(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes rendered on ``device`` in chunks: images [n, 3, 64, 64] (fp16) and attributes [n, 4]. Training
    draws its batches from such a pool with a device generator, so a step never waits on the host."""
    images, attrs = [], []
    for i, start in enumerate(range(0, n, POOL_CHUNK)):
        batch = make_scenes(min(POOL_CHUNK, n - start), seed * 1_000 + i, device=device)
        images.append(batch.images.half())
        attrs.append(batch.attributes)
    return torch.cat(images), torch.cat(attrs)


def train_tiny_sd(cfg, out_dir: Path, vae_minutes: float = 2.0, progress=None, vae_pool: int = 65_536,
                  latent_pool: int = 262_144, vae_eval: int = 512) -> dict:
    """Train tiny-sd (``cfg``: :class:`workbench.models.train.TrainConfig`; ``time_limit_min`` bounds the diffusion
    stage, ``vae_minutes`` the VAE stage; ``init_from`` continues a trained folder, skipping the VAE stage) and save
    the EMA pipeline to ``out_dir``. ``vae_eval`` scenes measure the VAE's reconstruction PSNR and latent scale.

    Both stages draw from pools held on the device: ``vae_pool`` rendered scenes for the VAE; ``latent_pool`` scenes
    encoded once by the trained VAE (posterior mean and standard deviation, a fresh latent sampled from them at every
    draw) with their caption rows for the diffusion stage."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    if cfg.init_from and not (Path(cfg.init_from) / "model_index.json").is_file():
        raise ValueError(f"--init-from {cfg.init_from} is not a tiny-sd folder (no model_index.json in it)")
    device = _device(cfg)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    use_bf16 = device.type == "cuda" and cfg.bf16
    if cfg.init_from:
        pipe = StableDiffusionPipeline.from_pretrained(cfg.init_from, safety_checker=None, feature_extractor=None,
                                                       requires_safety_checker=False)
    else:
        with tempfile.TemporaryDirectory() as tmp:  # the tokenizer's files, read into memory and saved with the rest
            pipe = build_tiny_sd(Path(tmp), seed=cfg.seed)
    record: dict = dict(config=asdict(cfg), device=str(device), vae_pool=vae_pool, latent_pool=latent_pool,
                        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    start = time.time()
    vae = pipe.vae.to(device)
    if not cfg.init_from:
        record["vae"] = _train_vae(vae, cfg, device, vae_minutes, use_bf16, progress, vae_pool, vae_eval)
    vae.train(False).requires_grad_(False)

    # --- stage 2: text encoder + UNet on the frozen VAE's latents
    t_pool = time.time()
    images, attrs = render_pool(latent_pool, cfg.data_seed, device)
    means, stds = [], []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        for chunk in images.split(POOL_CHUNK // 4):
            dist = vae.encode(chunk.float()).latent_dist
            means.append(dist.mean.to(torch.bfloat16))
            stds.append(dist.std.to(torch.bfloat16))
    means, stds, rows = torch.cat(means), torch.cat(stds), caption_index(attrs)
    del images
    record["latent_pool_minutes"] = (time.time() - t_pool) / 60
    text, unet = pipe.text_encoder.to(device).train(), pipe.unet.to(device).train()
    ids_table = caption_table(pipe.tokenizer).to(device)
    empty = ids_table.shape[0] - 1
    ema = [copy.deepcopy(m).train(False).requires_grad_(False) for m in (text, unet)]
    params = [p for m in (text, unet) for p in m.parameters()]
    ema_params = [p for m in ema for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    noise_sched = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                   if k in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")})
    alphas = noise_sched.alphas_cumprod.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    scale = vae.config.scaling_factor
    total = cfg.steps
    fit = cfg.lr_schedule == "cosine" and cfg.time_limit_min is not None
    t_stage, t100, losses, done = time.time(), time.time(), [], 0
    for step in range(cfg.steps):
        elapsed = time.time() - t_stage
        if cfg.time_limit_min is not None and elapsed > cfg.time_limit_min * 60:
            break
        if step == 100:
            t100 = time.time()
        if fit and step == 300:  # fit the cosine's length to the time left, from the speed of steps 100-300
            per_step = (time.time() - t100) / 200
            total = min(cfg.steps, 300 + int((cfg.time_limit_min * 60 - elapsed) / per_step))
        if step >= total:
            break
        idx = torch.randint(0, rows.numel(), (cfg.batch_size,), generator=gen, device=device)
        drop = torch.rand(idx.shape, generator=gen, device=device) < cfg.cfg_dropout
        ids = ids_table[torch.where(drop, torch.full_like(idx, empty), rows[idx])]
        eps = torch.randn(means[idx].shape, generator=gen, device=device)
        latents = (means[idx].float() + stds[idx].float() * eps) * scale
        noise = torch.randn(latents.shape, generator=gen, device=device)
        t = torch.randint(0, alphas.numel(), (latents.shape[0],), generator=gen, device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg, total)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            states = text(ids)[0]
            pred = unet(noisy, t, states).sample
        w = loss_weights(alphas[t], cfg)
        loss = (w * F.mse_loss(pred.float(), noise, reduction="none").mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():  # EMA with diffusers' warm-up, so a short run's average is not mostly its start
            torch._foreach_lerp_(ema_params, params, 1 - min(cfg.ema_decay, (1 + step) / (10 + step)))
        done = step + 1
        if step % 50 == 0:
            losses.append(float(loss.detach()))
            if progress is not None:
                progress({"step": step, "loss": losses[-1]})
    pipe.text_encoder, pipe.unet = ema
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.to("cpu").train(False)
    pipe.unet.to(torch.float16)  # 3.7 M parameters: 7.4 MB in fp16 (the text encoder and VAE stay fp32, < 4 MB)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    record.update(steps_done=done, schedule_steps=total, final_loss=sum(losses[-5:]) / max(len(losses[-5:]), 1),
                  diffusion_minutes=(time.time() - t_stage) / 60, train_minutes=(time.time() - start) / 60,
                  previous_run=_previous(cfg))
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record


def _previous(cfg) -> dict | None:
    if cfg.init_from and (Path(cfg.init_from) / "training.json").exists():
        return json.loads((Path(cfg.init_from) / "training.json").read_text())
    return None


def _train_vae(vae, cfg, device, minutes: float, use_bf16: bool, progress, pool: int, n_eval: int) -> dict:
    """Stage 1: the VAE on a pool of scenes (L1 + KL·1e-6, batch 128, a cosine learning rate over the time given),
    then its latent scaling factor."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 17)
    images = render_pool(pool, cfg.data_seed + 500, device)[0]
    t0, step, l1 = time.time(), 0, float("nan")
    while minutes > 0 and time.time() - t0 < minutes * 60:
        x = images[torch.randint(0, images.shape[0], (128,), generator=gen, device=device)].float()
        progress_frac = min((time.time() - t0) / (minutes * 60), 1.0)
        for group in opt.param_groups:
            group["lr"] = max(1e-3 * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * progress_frac)), 1e-5)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample(gen)).sample
        l1_t = (rec.float() - x).abs().mean()
        loss = l1_t + VAE_KL_WEIGHT * post.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            l1 = float(l1_t.detach())
            if progress is not None:
                progress({"step": step, "loss": l1})
        step += 1
    del images
    vae.train(False)
    with torch.no_grad():
        x = make_scenes(n_eval, 777_000, device=device).images
        lat = torch.cat([vae.encode(c).latent_dist.mode() for c in x.split(128)])
        rec = torch.cat([vae.decode(c).sample for c in lat.split(128)])
        std = float(lat.float().std())
        psnr = float(10 * torch.log10(4 / ((rec.float().clamp(-1, 1) - x) ** 2).mean()))
    vae.register_to_config(scaling_factor=1.0 / std)
    return dict(steps=step, minutes=(time.time() - t0) / 60, final_l1=l1, latent_std=std, scaling_factor=1.0 / std,
                reconstruction_psnr_db=psnr)


def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half the images blurred (σ 0.4-1.2 px) with a little Gaussian noise, as decoded samples look."""
    n, dev = images.shape[0], images.device
    sigma = (0.4 + 0.8 * torch.rand(n, generator=generator, device=dev))[:, None]
    x = torch.arange(-2, 3, device=dev, dtype=images.dtype)[None]
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = k / k.sum(1, keepdim=True)  # [n, 5]
    c = images.shape[1]
    flat = images.reshape(1, n * c, *images.shape[2:])
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    blurred = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="replicate"), kx, groups=n * c)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"), ky, groups=n * c).reshape_as(images)
    noisy = blurred + 0.03 * torch.randn(images.shape, generator=generator, device=dev)
    pick = torch.rand(n, generator=generator, device=dev)[:, None, None, None] < 0.5
    return torch.where(pick, noisy.clamp(-1, 1), images)


def train_scene_judge(cfg, out_dir: Path, progress=None) -> dict:
    """Train the scene judge (``cfg``: :class:`workbench.models.train.TrainConfig`; lr, steps, batch size, time
    limit, seeds) and save it with its held-out accuracy per attribute to ``out_dir``."""
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    model = SceneJudge().to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    start, step = time.time(), 0
    for step in range(cfg.steps):
        if cfg.time_limit_min is not None and time.time() - start > cfg.time_limit_min * 60:
            break
        batch = make_scenes(cfg.batch_size, cfg.data_seed * 1_000_000 + step, device=device)
        x = degrade(batch.images, gen)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16):
            logits = model(x)
        heads = model.split(logits.float())
        loss = sum(F.cross_entropy(h, batch.attributes[:, i]) for i, h in enumerate(heads))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress is not None and step % 50 == 0:
            progress({"step": step, "loss": float(loss)})
    model.train(False)
    val = make_scenes(2048, VAL_SEED, device=device)
    accuracy = {}
    for name, images in (("clean", val.images), ("degraded", degrade(val.images, gen))):
        pred = _run(model, images)[1]
        agree = pred == val.attributes.cpu()
        accuracy[name] = {"all": float(agree.all(1).float().mean()),
                          **{a: float(agree[:, i].float().mean()) for i, a in enumerate(ATTRIBUTES)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu").save_pretrained(out_dir, safe_serialization=True)
    record = dict(config=asdict(cfg), steps_done=step + 1, train_minutes=(time.time() - start) / 60,
                  validation_accuracy=accuracy, val_seed=VAL_SEED, device=str(device))
    (out_dir / "training.json").write_text(json.dumps(record, indent=2))
    return record
