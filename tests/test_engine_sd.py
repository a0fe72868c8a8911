"""The engine on a stock ``StableDiffusionPipeline`` the project never trained: a randomly initialised tiny UNet,
VAE and CLIP text encoder, with a tokenizer whose vocabulary is written here (no downloads)."""

import json

import pytest
import torch

import frdiff
from workbench.models.schedulers import make_scheduler

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    tokens = [chr(c) for c in range(97, 123)] + [chr(c) + "</w>" for c in range(97, 123)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, bos_token_id=len(tokens) - 2, eos_token_id=len(tokens) - 1,
        pad_token_id=len(tokens) - 1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(clip_sample=False), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sd(pipe, steps=5):
    return pipe("a cat", num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt",
                height=16, width=16, guidance_scale=5.0).images


@pytest.mark.parametrize("scheduler", ["ddim", "dpmpp", "euler", "unipc"])
def test_none_policy_is_exact_on_a_random_stable_diffusion_pipeline(sd_pipe, scheduler):
    before = sd_pipe.scheduler
    sd_pipe.scheduler = make_scheduler(scheduler, before.config)
    try:
        ref = _sd(sd_pipe)
        with frdiff.apply(sd_pipe, frdiff.make_preset("none", sd_pipe.unet, 5, scheduler=scheduler)):
            out = _sd(sd_pipe)
    finally:
        sd_pipe.scheduler = before
    assert torch.equal(ref, out)


def test_reuse_runs_on_stable_diffusion_and_leaves_it_stock(sd_pipe):
    ref = _sd(sd_pipe)
    policy = frdiff.make_preset("uniform", sd_pipe.unet, 5, interval=2, mix=True)
    with frdiff.apply(sd_pipe, policy) as run:
        out = _sd(sd_pipe)
    report = run.report()
    assert report.step_kinds == ["full", "skip", "full", "fr", "full"]  # r = 0.2 → λ 0; r = 0.6 → λ 1
    assert report.denoiser_calls == 4 and report.block_reuses == len(policy.blocks)
    assert 0 < (out - ref).abs().max() < 1
    assert frdiff.attached_hooks(sd_pipe) == [] and torch.equal(_sd(sd_pipe), ref)


@pytest.mark.parametrize("mode", [{"compile": "regional"}, {"compile": "full"},
                                  {"compile": "full", "cuda_graphs": "step"}])
def test_static_modes_run_a_stock_stable_diffusion_pipeline_as_the_eager_hooks_do(sd_pipe, mode, monkeypatch):
    """The compile and step-graph modes on a stock text-to-image pipeline — a positional 0-d timestep, the text
    encoder's states, the call's None keywords — give the eager hooks' images bit for bit (dynamo's ``eager``
    backend traces without generating code; step graphs on the CPU stand-in, two configurations captured), and a
    second pipeline call compiles and captures nothing."""
    import importlib

    monkeypatch.setattr(importlib.import_module("frdiff.apply"), "_FAKE_STEP_GRAPHS", True)
    policy = frdiff.make_preset("uniform", sd_pipe.unet, 5, interval=2, mix=True)
    with frdiff.apply(sd_pipe, policy):
        ref = _sd(sd_pipe)
    with frdiff.apply(sd_pipe, policy, backend="eager", **mode) as run:
        first, second = _sd(sd_pipe), _sd(sd_pipe)
    report = run.report()
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert report.graphs_per_run[1] == 0  # (the first call's graphs may have been compiled by an earlier apply)
    if "cuda_graphs" in mode:
        assert report.captures_per_run == [2, 0]
    frdiff.release_step_graphs(sd_pipe)
    assert frdiff.attached_hooks(sd_pipe) == []
