"""`tiny-sd`: a Stable Diffusion 1.x pipeline in miniature, built and trained by the project on captioned scenes.

It is a plain ``diffusers.StableDiffusionPipeline`` folder — ``AutoencoderKL``, ``CLIPTextModel``,
``CLIPTokenizer``, ``UNet2DConditionModel`` with SD's block types (cross-attention down/up blocks around a plain
lowest level), ``DDIMScheduler`` with SD's scaled-linear β schedule and no clipping — so the stock
``StableDiffusionPipeline.from_pretrained(folder)`` loads it with no project code. Images are 64×64, latents
4×16×16 (the VAE downsamples 4×, SD's 8× would leave 8×8).

The tokenizer's files are written here, offline: a CLIP BPE vocabulary of the letters plus merges that build each
word of the scene grammar into one token (:func:`write_tokenizer`); any other word falls back to letters.

Training (``python -m workbench train --model tiny-sd``, on a GPU; :mod:`workbench.models.train_sd`) has two stages
in one run:

1. the VAE, on scenes alone: L1 reconstruction plus a KL term of weight 1e-6 (SD's weight; no perceptual or
   adversarial loss — there are no LPIPS weights here, and the scenes are smooth); then its ``scaling_factor`` is
   set to 1 / the standard deviation of 512 encoded latents, as SD's 0.18215 was;
2. the text encoder and the UNet together from scratch on the frozen VAE's latents: ε-prediction MSE with Min-SNR-5
   weights, a cosine learning rate fitted to the time limit, 10 % empty captions for classifier-free guidance, EMA
   weights shipped (the recipe that fixed tiny-dit and tiny-unet).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workbench.models.scenes import ATTRIBUTE_VALUES, SCENE_SIZE, WORDS, caption

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
