"""`tiny-sd`: a Stable Diffusion 1.x pipeline in miniature, built and trained by the project on captioned scenes.

It is a plain ``diffusers.StableDiffusionPipeline`` folder — ``AutoencoderKL``, ``CLIPTextModel``,
``CLIPTokenizer``, ``UNet2DConditionModel`` with SD's block types (cross-attention down/up blocks around a plain
lowest level), ``DDIMScheduler`` with SD's scaled-linear β schedule and no clipping — so the stock
``StableDiffusionPipeline.from_pretrained(folder)`` loads it with no project code. Images are 64×64, latents
4×16×16 (the VAE downsamples 4×, SD's 8× would leave 8×8).

The tokenizer's files are written here, offline: a CLIP BPE vocabulary of the letters plus merges that build each
word of the scene grammar into one token (:func:`write_tokenizer`); any other word falls back to letters.

Training (``python -m workbench train --model tiny-sd``, on a GPU) has two stages in one run:

1. the VAE, on scenes alone: L1 reconstruction plus a KL term of weight 1e-6 (SD's weight; no perceptual or
   adversarial loss — there are no LPIPS weights here, and the scenes are smooth); then its ``scaling_factor`` is
   set to 1 / the standard deviation of 4096 encoded latents, as SD's 0.18215 was;
2. the text encoder and the UNet together from scratch on the frozen VAE's latents: ε-prediction MSE with Min-SNR-5
   weights, a cosine learning rate fitted to the time limit, 10 % empty captions for classifier-free guidance, EMA
   weights shipped (the recipe that fixed tiny-dit and tiny-unet).
"""

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

from workbench.models.scenes import ATTRIBUTE_VALUES, SCENE_SIZE, WORDS, caption, make_scenes

MAX_TOKENS = 16  # "a yellow triangle at the bottom right on a black background" is 13 tokens with BOS and EOS
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                   max_position_embeddings=MAX_TOKENS, projection_dim=64)
UNET_CONFIG = dict(sample_size=SCENE_SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(64, 96, 96),
                   layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                   cross_attention_dim=64, attention_head_dim=16, norm_num_groups=16)
VAE_CONFIG = dict(block_out_channels=(32, 64, 64), in_channels=3, out_channels=3, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  layers_per_block=1, norm_num_groups=16, sample_size=SCENE_SIZE)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing",
                        prediction_type="epsilon")
VAE_KL_WEIGHT = 1e-6


def tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """The vocabulary and the merges of the scene tokenizer: byte-level letters (alone and word-final), then for each
    word (longest first) the merges that build it left to right, each product added to the vocabulary."""
    letters = [chr(c) for c in range(97, 123)]
    vocab = letters + [c + "</w>" for c in letters]
    merges: list[str] = []
    for word in sorted(WORDS, key=lambda w: (-len(w), w)):
        if len(word) < 2:
            continue
        left = word[0]
        for i in range(1, len(word)):
            right = word[i] + ("</w>" if i == len(word) - 1 else "")
            pair = f"{left} {right}"
            left = left + right
            if pair not in merges:
                merges.append(pair)
            if left not in vocab:
                vocab.append(left)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def write_tokenizer(folder: Path):
    """Write the scene tokenizer's ``vocab.json`` and ``merges.txt`` to ``folder`` and return the
    ``CLIPTokenizer`` read from them."""
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_files()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


def build_tiny_sd(work: Path, seed: int = 0):
    """A randomly initialised tiny-sd ``StableDiffusionPipeline`` (tokenizer files written under ``work``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = write_tokenizer(work / "tokenizer-files")
    torch.manual_seed(seed)
    vocab = len(tokenizer.get_vocab())
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                        **TEXT_CONFIG))
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**VAE_CONFIG), text_encoder=text, tokenizer=tokenizer,
        unet=UNet2DConditionModel(**UNET_CONFIG), scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.train(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def caption_table(tokenizer) -> torch.Tensor:
    """Token ids [6·6·5·6 + 1, MAX_TOKENS] of every caption, indexed by :func:`caption_index`; the last row is the
    empty caption (the unconditional input of classifier-free guidance)."""
    sizes = [len(ATTRIBUTE_VALUES[a]) for a in ("shape", "colour", "position", "background")]
    texts = [caption(s, c, p, b) for s in range(sizes[0]) for c in range(sizes[1]) for p in range(sizes[2])
             for b in range(sizes[3])] + [""]
    ids = tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return ids.input_ids


def caption_index(attributes: torch.Tensor) -> torch.Tensor:
    """Row of :func:`caption_table` for each attribute row [n, 4]."""
    s, c, p, b = attributes.unbind(1)
    return ((s * 6 + c) * 5 + p) * 6 + b


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

    from workbench.models.train import _device, _lr_at, loss_weights

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
