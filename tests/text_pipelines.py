"""Randomly initialised tiny text-to-image pipelines of every supported family (issue 20), built offline: tiny
``CLIPTextModel`` / ``T5EncoderModel`` from ``transformers`` configs, tokenizer files written here (a CLIP BPE
vocabulary of letters and a few words with no merges; a T5 unigram vocabulary), a two-level ``AutoencoderKL`` and the
family's denoiser at a few thousand parameters. Every module is put in eval mode: a randomly built T5 is in train
mode, and its dropout would make two stock runs differ. Images are 16×16 px (8×8 latents)."""
import json
from pathlib import Path

import torch

WORDS = ["a", "red", "blue", "green", "star", "circle", "square", "on", "at", "the", "top", "left", "background",
         "photo", "of", "cat"]


def clip_tokenizer(folder: Path, max_length: int = 16):
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokens = [chr(c) for c in range(97, 123)] + [chr(c) + "</w>" for c in range(97, 123)]
    tokens += [w + "</w>" for w in WORDS if len(w) > 1]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    return tokenizer, len(tokens)


def t5_tokenizer(folder: Path, max_length: int = 16):
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -1.0) for w in WORDS] + [(chr(c), -3.0) for c in range(97, 123)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length), len(vocab)


def clip_text(vocab, hidden=32, projection=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1, projection_dim=projection or hidden)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def t5_text(vocab, d=32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=d, d_kv=8, d_ff=2 * d, num_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def vae(latent=4, shift=None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=latent,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=16, shift_factor=shift,
                         scaling_factor=1.0 if shift is not None else 0.18215)


def sd(tmp):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tok, n = clip_tokenizer(tmp / "tok")
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    return StableDiffusionPipeline(vae=vae(), text_encoder=clip_text(n), tokenizer=tok, unet=unet,
                                   scheduler=DDIMScheduler(clip_sample=False, timestep_spacing="trailing"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sdxl(tmp):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tok, n = clip_tokenizer(tmp / "tok")
    tok2, n2 = clip_tokenizer(tmp / "tok2")
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=8)
    return StableDiffusionXLPipeline(vae=vae(), text_encoder=clip_text(n), text_encoder_2=clip_text(n2, 32, 32),
                                     tokenizer=tok, tokenizer_2=tok2, unet=unet,
                                     scheduler=EulerDiscreteScheduler(timestep_spacing="trailing"))


def pixart(tmp):
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    tok, n = t5_tokenizer(tmp / "t5")
    tr = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                  num_attention_heads=4, caption_channels=32, in_channels=4, cross_attention_dim=32,
                                  out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
                                  num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                                  norm_eps=1e-6)
    return PixArtAlphaPipeline(tokenizer=tok, text_encoder=t5_text(n), vae=vae(), transformer=tr,
                               scheduler=DDIMScheduler(clip_sample=False, timestep_spacing="trailing"))


def sd3(tmp):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tok, n = clip_tokenizer(tmp / "tok")
    tok2, n2 = clip_tokenizer(tmp / "tok2")
    tok3, n3 = t5_tokenizer(tmp / "t5")
    tr = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                               num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                               pooled_projection_dim=64, out_channels=4)
    return StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(4, 0.0),
                                    text_encoder=clip_text(n, 32, 32), tokenizer=tok,
                                    text_encoder_2=clip_text(n2, 32, 32), tokenizer_2=tok2,
                                    text_encoder_3=t5_text(n3), tokenizer_3=tok3)


def flux(tmp):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tok, n = clip_tokenizer(tmp / "tok")
    tok2, n2 = t5_tokenizer(tmp / "t5")
    tr = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                axes_dims_rope=[4, 4, 8])
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(1, 0.0), text_encoder=clip_text(n),
                        tokenizer=tok, text_encoder_2=t5_text(n2), tokenizer_2=tok2, transformer=tr)


FAMILIES = {"sd": sd, "sdxl": sdxl, "pixart": pixart, "sd3": sd3, "flux": flux}
SIZE = {"height": 16, "width": 16}


def build(family: str, tmp: Path, seed: int = 0):
    """The tiny ``family`` pipeline, randomly initialised from ``seed``, every module in eval mode."""
    torch.manual_seed(seed)
    pipe = FAMILIES[family](tmp)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def saved(family: str, tmp: Path, seed: int = 0) -> Path:
    """The tiny ``family`` pipeline written with ``save_pretrained`` to ``tmp / family``: a local diffusers folder."""
    folder = tmp / family
    build(family, tmp / f"{family}-tokenizers", seed).save_pretrained(folder)
    return folder
