"""ε_key held or forecast as the data prediction x̂₀ (``skip_space`` "data"): the coefficients each scheduler gives,
the round trip output → x̂₀ → output, the engine's rule against a manual computation, the file format, and the
messages where it cannot apply."""

import json

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

import frdiff
from frdiff import Policy, PolicyError, make_preset
from frdiff.prediction import data_coefficients, from_data, to_data
from workbench.models.schedulers import make_scheduler


@pytest.mark.parametrize("cls", [DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler,
                                 EulerDiscreteScheduler])
def test_epsilon_coefficients_are_the_noise_schedules(cls):
    """x̂₀ = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t at each step's timestep, whether the scheduler keeps VE sigmas or only ᾱ."""
    sched = cls(timestep_spacing="trailing")
    sched.set_timesteps(10)
    ac = sched.alphas_cumprod.double()[sched.timesteps.round().long()]
    coef = torch.tensor(data_coefficients(sched, 10), dtype=torch.float64)
    torch.testing.assert_close(coef[:, 0], 1 / ac.sqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(coef[:, 1], -(1 - ac).sqrt() / ac.sqrt(), rtol=1e-5, atol=0)


def test_v_prediction_sample_and_flow_coefficients():
    v = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    v.set_timesteps(4)
    ac = v.alphas_cumprod.double()[v.timesteps.long()]
    coef = torch.tensor(data_coefficients(v, 4), dtype=torch.float64)
    torch.testing.assert_close(coef, torch.stack([ac.sqrt(), -(1 - ac).sqrt()], 1))  # x̂₀ = α·x_t − σ·v
    s = DDIMScheduler(prediction_type="sample")
    s.set_timesteps(4)
    assert data_coefficients(s, 4) == [(0.0, 1.0)] * 4  # the output is x̂₀
    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(5)
    sig = flow.sigmas[:5].double()
    coef = torch.tensor(data_coefficients(flow, 5), dtype=torch.float64)
    torch.testing.assert_close(coef, torch.stack([torch.ones(5, dtype=torch.float64), -sig], 1))  # x̂₀ = x_t − σ·v


def test_round_trip_and_learned_variance_channels():
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    coef = (12.5, -12.46)
    x0 = to_data(eps, x, coef)
    torch.testing.assert_close(x0, 12.5 * x - 12.46 * eps)
    torch.testing.assert_close(from_data(x0, x, coef, torch.float32), eps, rtol=1e-5, atol=1e-5)
    var = torch.randn(2, 4, 8, 8, generator=gen)
    both = to_data(torch.cat([eps, var], 1), x, coef)  # DiT-XL/2: ε and the variance, twice the channels
    assert torch.equal(both[:, 4:], var) and torch.equal(both[:, :4], x0)
    back = from_data(both, x, coef, torch.float16)
    assert back.dtype == torch.float16 and back.shape == (2, 8, 8, 8)
    torch.testing.assert_close(back[:, :4].float(), eps, rtol=2e-3, atol=2e-3)
    with pytest.raises(PolicyError, match="input's shape"):
        to_data(torch.zeros(2, 4, 4, 4), x, coef)  # another spatial size
    with pytest.raises(PolicyError, match="input's shape"):
        to_data(torch.zeros(2, 6, 8, 8), x, coef)  # more channels than the input, not twice


def test_skipped_steps_forecast_x0_and_turn_it_back_at_their_own_input(unet_pipe):
    """reduced NFE, 6 steps, taylor1 in data space under DPM-Solver++: the output at step 1 is the one that gives
    step 0's x̂₀ at step 1's input (hold: one full step behind); at steps 3 and 5 the line through the last two
    full steps' x̂₀, turned back with that step's coefficients. Checked against the noise schedule by hand."""
    policy = make_preset("reduced-nfe", unet_pipe.unet, 6, scheduler="dpmpp", interval=2, reuse="taylor1",
                         skip_space="data")
    assert policy.skip_space == "data" and policy.provenance["skip_space"] == "data"
    seen = []
    pre = unet_pipe.unet.register_forward_pre_hook(lambda m, a, k: seen.append([a[0], a[1], None]), with_kwargs=True)
    post = unet_pipe.unet.register_forward_hook(lambda m, a, o: seen[-1].__setitem__(2, o.sample))
    original = unet_pipe.scheduler
    unet_pipe.scheduler = make_scheduler("dpmpp", original.config)
    try:
        with frdiff.apply(unet_pipe, policy) as run:
            unet_pipe([2], num_inference_steps=6, generator=[torch.Generator().manual_seed(0)], output_type="pt")
        ac = unet_pipe.scheduler.alphas_cumprod.double()
    finally:
        pre.remove()
        post.remove()
        unet_pipe.scheduler = original
    assert run.report().step_kinds == ["full", "skip"] * 3 and len(seen) == 6

    def coef(s):
        a = ac[int(seen[s][1].flatten()[0])]
        return 1 / a.sqrt(), -(1 - a).sqrt() / a.sqrt()

    def x0(s):
        a, b = coef(s)
        return a * seen[s][0].double() + b * seen[s][2].double()

    def output(s, target):
        a, b = coef(s)
        return (target - a * seen[s][0].double()) / b

    torch.testing.assert_close(seen[1][2].double(), output(1, x0(0)), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(seen[1][2], seen[0][2])  # holding x̂₀ is not holding ε
    for s in (3, 5):
        torch.testing.assert_close(seen[s][2].double(), output(s, 1.5 * x0(s - 1) - 0.5 * x0(s - 3)),
                                   rtol=1e-4, atol=1e-4)


def test_the_file_names_skip_space_only_when_data(unet_pipe, tmp_path):
    out = make_preset("reduced-nfe", unet_pipe.unet, 8, reuse="taylor1")
    data = out.replaced(skip_space="data")
    assert "skip_space" not in out.to_dict() and json.loads(data.to_json())["skip_space"] == "data"
    assert Policy.load(data.save(tmp_path / "p.json")).skip_space == "data"
    assert "ε_key: taylor1 of x̂₀" in data.reuse_summary()
    bad = dict(data.to_dict(), skip_space="latent")
    with pytest.raises(PolicyError, match="skip_space 'latent' is not one of output, data"):
        Policy.from_dict(bad)
    with pytest.raises(ValueError, match="skip_space 'x0'"):
        make_preset("reduced-nfe", unet_pipe.unet, 8, skip_space="x0")


def test_data_space_needs_the_pipelines_scheduler_and_a_known_rule(unet_pipe):
    policy = make_preset("reduced-nfe", unet_pipe.unet, 4, reuse="taylor1", skip_space="data")
    with pytest.raises(PolicyError, match="not to its denoiser"), frdiff.apply(unet_pipe.unet, policy,
                                                                               check_model=False):
        pass
    original = unet_pipe.scheduler
    try:
        unet_pipe.scheduler = EDMEulerScheduler()  # EDM preconditioning: not an affine ε/v/x̂₀ rule
        with pytest.raises(PolicyError, match="EDM-preconditioned"), frdiff.apply(unet_pipe, policy):
            pass
        unet_pipe.scheduler = DDIMScheduler(prediction_type="velocity")
        with pytest.raises(PolicyError, match="prediction_type 'velocity'"), frdiff.apply(unet_pipe, policy):
            pass
        begun = make_scheduler("dpmpp", original.config)
        begun.set_timesteps(4)
        begun.set_begin_index(2)  # an img2img run that starts half-way
        unet_pipe.scheduler = begun
        with pytest.raises(PolicyError, match="begins at step 2"), frdiff.apply(unet_pipe, policy):
            unet_pipe.denoise(torch.zeros(2, 3, 32, 32), torch.tensor([499, 499]), torch.tensor([1, 2]))
    finally:
        unet_pipe.scheduler = original
    assert frdiff.attached_hooks(unet_pipe) == []  # every refusal leaves the pipeline as it was


def test_half_precision_keeps_x0_in_float32_until_the_output():
    """Holding x̂₀ at the same x_t gives the output back: in bf16 the round trip's error is the output's own rounding,
    not x̂₀'s rounding divided by a small b (the conversions run in float32)."""
    gen = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 4, 8, 8, generator=gen).bfloat16(), torch.randn(2, 4, 8, 8, generator=gen).bfloat16()
    a, sigma = 1 / 0.9987, 0.05  # late in sampling: α ≈ 1, σ small
    coef = (a, -sigma * a)
    x0 = to_data(eps, x, coef)
    assert x0.dtype == torch.float32
    back = from_data(x0, x, coef, torch.bfloat16)
    assert (back.float() - eps.float()).abs().max() <= 2 * (eps.float().abs().max() * 2 ** -8)


def test_inpainting_inputs_use_their_latent_channels():
    gen = torch.Generator().manual_seed(2)
    x, eps = torch.randn(1, 9, 4, 4, generator=gen), torch.randn(1, 4, 4, 4, generator=gen)
    torch.testing.assert_close(to_data(eps, x, (2.0, -1.0)), 2.0 * x[:, :4] - eps)


def test_unipc_does_not_correct_with_a_forecast_output(unet_pipe):
    """Under UniPC a skipped step's output is a forecast, not an evaluation: with skip_space "data" the corrector
    that would use it (``disable_corrector`` holds s − 1 for skipped step s) is off during the run, and the
    scheduler is given back as it was; an ``output`` policy leaves the scheduler alone."""
    original = unet_pipe.scheduler
    seen = []
    try:
        for space in ("data", "output"):
            sched = make_scheduler("unipc", original.config)
            own = sched.disable_corrector
            unet_pipe.scheduler = sched
            policy = make_preset("reduced-nfe", unet_pipe.unet, 8, scheduler="unipc", interval=2, reuse="taylor1",
                                 skip_space=space)
            hook = unet_pipe.unet.register_forward_pre_hook(
                lambda m, a, sched=sched: seen.append(list(sched.disable_corrector)))
            try:
                with frdiff.apply(unet_pipe, policy):
                    unet_pipe([2], num_inference_steps=8, generator=[torch.Generator().manual_seed(0)],
                              output_type="pt")
            finally:
                hook.remove()
            assert sched.disable_corrector is own and own == []
            expected = [0, 2, 4, 6] if space == "data" else []  # skipped steps 1, 3, 5, 7
            assert seen[-1] == expected, space
    finally:
        unet_pipe.scheduler = original
