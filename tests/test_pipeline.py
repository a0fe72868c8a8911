import numpy as np
import pytest
import torch

from workbench.models.pipeline import ShapesPipeline
from workbench.models.schedulers import SCHEDULERS, make_scheduler, scheduler_name


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("fixture", ["random_unet_pipe", "random_dit_pipe"])
def test_save_and_load_round_trip(fixture, request, tmp_path):
    pipe = request.getfixturevalue(fixture)
    before = pipe([0, 3], num_inference_steps=3, generator=_gens([1, 2]), output_type="pt").images
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    assert not list((tmp_path / "p").rglob("*.bin"))
    loaded = ShapesPipeline.from_pretrained(tmp_path / "p", use_safetensors=True)
    loaded.set_progress_bar_config(disable=True)
    after = loaded([0, 3], num_inference_steps=3, generator=_gens([1, 2]), output_type="pt").images
    assert torch.equal(before, after)
    assert loaded.config.class_names == pipe.config.class_names


def test_each_image_depends_only_on_its_seed(random_unet_pipe):
    alone = random_unet_pipe([4], num_inference_steps=3, generator=_gens([9]), output_type="pt").images
    batched = random_unet_pipe([1, 4, 2], num_inference_steps=3, generator=_gens([5, 9, 7]), output_type="pt").images
    # Batched CPU kernels may round differently from single-image ones; nothing else may differ.
    assert torch.allclose(alone[0], batched[1], atol=1e-3)


def test_cfg_matches_manual_guidance(random_dit_pipe):
    """ε = ε_u + w(ε_c − ε_u) with [uncond, cond] batching: one DDIM step by hand equals the pipeline's step."""
    pipe = random_dit_pipe
    w = 2.5
    latents = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = pipe([2], num_inference_steps=1, guidance_scale=w, latents=latents.clone(), output_type="pt").images
    pipe.scheduler.set_timesteps(1)
    t = pipe.scheduler.timesteps[0]
    with torch.no_grad():  # one batched call, as the pipeline makes it, so kernels round identically
        eps_u, eps_c = pipe.denoise(torch.cat([latents, latents]), t, torch.tensor([pipe.null_class, 2])).chunk(2)
    eps = eps_u + w * (eps_c - eps_u)
    manual = pipe.scheduler.step(eps, t, latents).prev_sample.clamp(-1, 1)
    assert torch.allclose(out, manual, atol=1e-5)


def test_guidance_one_disables_cfg(random_unet_pipe):
    calls = []
    hook = random_unet_pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        random_unet_pipe([0, 1], num_inference_steps=2, guidance_scale=1.0, generator=_gens([0, 1]))
        assert calls == [2, 2]
        calls.clear()
        random_unet_pipe([0, 1], num_inference_steps=2, guidance_scale=3.0, generator=_gens([0, 1]))
        assert calls == [4, 4]
    finally:
        hook.remove()


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_samples(random_dit_pipe, name):
    pipe = random_dit_pipe
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(name, original.config)
    try:
        assert scheduler_name(pipe.scheduler) == name
        images = pipe([0], num_inference_steps=4, generator=_gens([0]), output_type="np").images
        assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
        assert images.min() >= 0 and images.max() <= 1
    finally:
        pipe.scheduler = original


def test_output_types_and_bad_inputs(random_dit_pipe):
    pil = random_dit_pipe("circle", num_inference_steps=1, generator=_gens([0])).images
    assert pil[0].size == (32, 32)
    with pytest.raises(ValueError, match="unknown class 'hexagon'"):
        random_dit_pipe("hexagon", num_inference_steps=1)
    with pytest.raises(ValueError, match="out of range"):
        random_dit_pipe([7], num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        random_dit_pipe([0], num_inference_steps=1, output_type="jpeg")
    with pytest.raises(ValueError, match="num_inference_steps"):
        random_dit_pipe([0], num_inference_steps=0)
    with pytest.raises(ValueError, match="make_scheduler|unknown scheduler"):
        make_scheduler("heun3000", random_dit_pipe.scheduler.config)


def test_step_callback_sees_every_step(random_unet_pipe):
    seen = []

    def cb(pipe, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {}

    random_unet_pipe([0], num_inference_steps=4, generator=_gens([0]), callback_on_step_end=cb)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert [s[1] for s in seen] == random_unet_pipe.scheduler.timesteps.tolist()
    assert seen[0][2] == (1, 3, 32, 32)


@pytest.mark.parametrize("name", ["ddim", "dpmpp", "euler", "unipc"])
def test_the_sampler_works_on_host_timesteps(random_unet_pipe, name, monkeypatch):
    """The scheduler's timesteps stay on the CPU (its per-step arithmetic reads host values: no GPU sync per step)
    and the denoiser's timesteps are views of one tensor uploaded before the loop; the images are those of a loop
    that hands the scheduler's own timesteps to the denoiser. On the CPU the upload is the tensor itself, so what
    fails here against a loop that puts the timesteps on the model's device is the ``set_timesteps`` call (the
    images guard later changes of the loop); the sync itself is the CUDA test's below."""
    pipe = random_unet_pipe
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(name, original.config)
    devices, storages = [], []
    set_timesteps = pipe.scheduler.set_timesteps

    def spy(n, *args, **kwargs):
        devices.append(kwargs.get("device", args[0] if args else None))
        return set_timesteps(n, *args, **kwargs)

    hook = pipe.unet.register_forward_pre_hook(lambda m, a: storages.append(a[1].untyped_storage().data_ptr()))
    monkeypatch.setattr(pipe.scheduler, "set_timesteps", spy)
    try:
        got = pipe([0, 2], num_inference_steps=4, generator=_gens([0, 1]), output_type="pt").images
        hook.remove()
        assert devices == [None] and len(storages) == 4 and len(set(storages)) == 1
        # by hand: the same loop with the scheduler's timestep handed to the denoiser
        pipe.scheduler.set_timesteps(4)
        latents = torch.cat([torch.randn(1, 3, 32, 32, generator=g) for g in _gens([0, 1])])
        latents = latents * pipe.scheduler.init_noise_sigma
        labels = torch.tensor([pipe.null_class] * 2 + [0, 2])
        for t in pipe.scheduler.timesteps:
            with torch.no_grad():
                eps_u, eps_c = pipe.denoise(pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t), t,
                                            labels).chunk(2)
            eps = eps_u + pipe.config.default_guidance_scale * (eps_c - eps_u)
            latents = pipe.scheduler.step(eps, t, latents).prev_sample
        assert torch.equal(got, latents.clamp(-1, 1))
    finally:
        hook.remove()
        pipe.scheduler = original


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are CUDA's (CI has none; the GPU runs it)")
@pytest.mark.parametrize("name", ["ddim", "dpmpp", "euler"])
@pytest.mark.parametrize("model", ["tiny-unet", "tiny-dit"])
@pytest.mark.parametrize("fr", [False, True])
def test_the_sampling_loop_never_waits_on_the_gpu(model, name, fr):
    """From the end of step 0 to the last step, the pipeline's loop — CFG, the scheduler's step, the denoiser, with
    or without an FR policy (M=2, score mixing) — makes no host sync: ``torch.cuda.set_sync_debug_mode("error")``
    raises at one. So the host queues step after step while the GPU computes, and the sampler's Python overlaps the
    denoiser's work instead of adding to it. Not UniPC, whose step uploads its CPU sigmas to the sample's device
    (diffusers' ``.to(device)``, a sync each step), nor DDPM, which draws each step's noise from the caller's CPU
    generators and uploads it."""
    import frdiff
    from workbench.models.zoo import build_pipeline

    pipe = build_pipeline(model, seed=0).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)

    def strict(_pipe, i, _t, tensors):
        torch.cuda.set_sync_debug_mode("error")
        return tensors

    policy = frdiff.make_preset("uniform", pipe.denoiser, 6, interval=2, mix=True)
    with frdiff.apply(pipe, policy) if fr else frdiff.exclusive(pipe):
        try:
            images = pipe([0, 1], num_inference_steps=6, generator=_gens([0, 1]), output_type="pt",
                          callback_on_step_end=strict).images
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert images.shape == (2, 3, 32, 32) and bool(torch.isfinite(images).all())
