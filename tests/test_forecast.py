"""Forecast reuse (policy version 2): the extrapolation itself, every forecast rule against a manual computation,
the fall-back while a block has too few keyframes, ε forecasts at skipped steps, the forecast axis, version-1
files, and the predicted cache memory against the bytes a run actually holds."""

import json

import pytest
import torch

import frdiff
from frdiff import Mixing, Policy, make_preset
from frdiff.reuse import extrapolation_weights, forecast, remember


def _policy(pipe, blocks, mask, steps, reuse, granularity=None, **kw):
    den = frdiff.denoiser_of(pipe)
    kinds = dict(frdiff.find_blocks(den))
    return Policy(blocks=blocks, keyframes=torch.tensor(mask, dtype=torch.bool), steps=steps,
                  kinds=[kinds[b] for b in blocks], granularity=granularity, reuse=[reuse] * len(blocks),
                  model={"architecture": type(den).__name__, "fingerprint": frdiff.model_fingerprint(den)}, **kw)


# ---- the extrapolation --------------------------------------------------------------------------------------------
def test_order_one_forecast_of_a_feature_linear_in_the_step_is_exact():
    a, b = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    hist = None
    for s in (0, 2, 5):  # uneven keyframes
        hist = remember(hist, a + b * s, float(s), order=1)
    assert len(hist) == 2  # order 1 keeps the 2 newest
    for x in (6.0, 7.0, 9.0):
        torch.testing.assert_close(forecast(hist, x, torch.float64), a + b * x, rtol=0, atol=1e-12)


def test_order_two_forecast_of_a_quadratic_is_exact_and_order_one_is_not():
    c = [torch.randn(5, dtype=torch.float64) for _ in range(3)]

    def f(s):
        return c[0] + c[1] * s + c[2] * s * s

    h1, h2 = None, None
    for s in (0, 3, 6):
        h1, h2 = remember(h1, f(s), float(s), 1), remember(h2, f(s), float(s), 2)
    torch.testing.assert_close(forecast(h2, 8.0, torch.float64), f(8.0), rtol=0, atol=1e-10)
    assert not torch.allclose(forecast(h1, 8.0, torch.float64), f(8.0))


def test_weights_are_lagrange_and_sum_to_one():
    assert extrapolation_weights([2.0, 0.0], 3.0) == [1.5, -0.5]
    assert extrapolation_weights([4.0, 2.0, 0.0], 5.0) == [1.875, -1.25, 0.375]
    assert sum(extrapolation_weights([9.0, 4.0, 1.0], 11.0)) == pytest.approx(1.0)


def test_too_few_keyframes_fall_back_to_hold_then_to_the_order_they_allow():
    v0, v1 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    one = remember(None, v0, 0.0, order=2)
    assert torch.equal(forecast(one, 1.0, torch.float32), v0)  # a single keyframe: hold
    two = remember(one, v1, 2.0, order=2)
    assert torch.equal(forecast(two, 3.0, torch.float32), torch.tensor([4.0, 8.0]))  # two: linear


# ---- each rule in the engine against a manual computation ------------------------------------------------------------
def _steps(pipe, policy, target, n):
    """``n`` denoiser calls (steps 0..n-1, different inputs and timesteps) under ``policy``; calls of ``target``."""
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(2, 3, 32, 32, generator=gen) for _ in range(n)]
    ts = [torch.tensor([900 - 100 * i] * 2) for i in range(n)]
    labels = torch.tensor([1, 6])
    calls = []
    h1 = target.register_forward_pre_hook(lambda m, a, k: calls.append([a, k, None]), with_kwargs=True)
    h2 = target.register_forward_hook(lambda m, a, o: calls[-1].__setitem__(2, o))
    try:
        with frdiff.apply(pipe.denoiser, policy, check_model=False) as run:
            outs = [pipe.denoise(x, t, labels) for x, t in zip(xs, ts, strict=True)]
    finally:
        h1.remove()
        h2.remove()
    return calls, outs, run.report(), (xs, ts, labels)


def test_resnet_taylor1_forecasts_conv1_and_recomputes_the_rest(unet_pipe):
    name = "up_blocks.1.resnets.0"
    block = dict(unet_pipe.unet.named_modules())[name]
    calls, _, _, _ = _steps(unet_pipe, _policy(unet_pipe, [name], [[1, 0, 1, 0]], 4, "taylor1"), block, 4)
    silu = torch.nn.functional.silu
    with torch.no_grad():
        h0, h2 = (block.conv1(silu(block.norm1(calls[s][0][0]))) for s in (0, 2))  # heavy parts at the keyframes
        x3, temb3 = calls[3][0][0], calls[3][0][1]
        h = 1.5 * h2 - 0.5 * h0 + block.time_emb_proj(silu(temb3))[:, :, None, None]  # forecast to step 3
        manual = (block.conv_shortcut(x3) + block.conv2(silu(block.norm2(h)))) / block.output_scale_factor
    torch.testing.assert_close(calls[3][2], manual, atol=1e-5, rtol=1e-5)


def test_attention_taylor2_forecasts_the_residual(unet_pipe):
    name = "down_blocks.1.attentions.0"
    block = dict(unet_pipe.unet.named_modules())[name]
    mask = [[1, 0, 1, 0, 1, 0]]
    calls, _, _, _ = _steps(unet_pipe, _policy(unet_pipe, [name], mask, 6, "taylor2"), block, 6)
    first = frdiff.blocks.first_tensor
    r = {s: first(calls[s][2]) - calls[s][0][0] for s in (0, 2, 4)}
    w = extrapolation_weights([4.0, 2.0, 0.0], 5.0)
    manual = calls[5][0][0] + w[0] * r[4] + w[1] * r[2] + w[2] * r[0]
    torch.testing.assert_close(first(calls[5][2]), manual, atol=1e-5, rtol=1e-5)


def test_dit_taylor1_forecasts_self_attention_before_gating(dit_pipe):
    name = "transformer_blocks.1"
    block = dict(dit_pipe.transformer.named_modules())[name]
    calls, _, _, _ = _steps(dit_pipe, _policy(dit_pipe, [name], [[1, 0, 0, 1, 0]], 5, "taylor1"), block.attn1, 5)
    a0, a3 = calls[0][2], calls[3][2]  # attn1 ran at the keyframes 0 and 3 only
    assert len(calls) == 5 and calls[4][2] is not a3
    torch.testing.assert_close(calls[4][2], a3 + (a3 - a0) / 3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixture,name", [("unet_pipe", "mid_block.resnets.0"), ("dit_pipe", "transformer_blocks.0")])
def test_block_granularity_taylor1_forecasts_the_whole_output(fixture, name, request):
    pipe = request.getfixturevalue(fixture)
    block = dict(pipe.denoiser.named_modules())[name]
    policy = _policy(pipe, [name], [[1, 0, 1, 0]], 4, "taylor1", granularity=["block"])
    calls, _, report, _ = _steps(pipe, policy, block, 4)
    o0, o2 = (frdiff.blocks.first_tensor(calls[s][2]) for s in (0, 2))
    torch.testing.assert_close(frdiff.blocks.first_tensor(calls[3][2]), 1.5 * o2 - 0.5 * o0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(frdiff.blocks.first_tensor(calls[1][2]), o0, atol=0, rtol=0)  # one keyframe: hold
    assert report.block_reuses == 2


def test_skipped_steps_forecast_eps_from_the_last_full_steps(unet_pipe):
    den = unet_pipe.unet
    hold = make_preset("reduced-nfe", den, 4, interval=2)
    fore = make_preset("reduced-nfe", den, 4, interval=2, reuse="taylor1")
    assert fore.skip_reuse == "taylor1" and hold.skip_reuse == "hold"
    _, (e0, e1, e2, e3), report, _ = _steps(unet_pipe, fore, den, 4)
    _, (h0, h1, h2, h3), _, _ = _steps(unet_pipe, hold, den, 4)
    assert torch.equal(e0, h0) and torch.equal(e2, h2) and torch.equal(e1, e0)  # step 1: one full step, hold
    torch.testing.assert_close(e3, 1.5 * e2 - 0.5 * e0, atol=1e-6, rtol=1e-6)
    assert torch.equal(h3, h2) and report.denoiser_calls == 2 and report.step_kinds == ["full", "skip"] * 2


def test_mixing_blends_with_the_forecast_eps_key(unet_pipe):
    den = unet_pipe.unet
    blocks = [b for b, _ in frdiff.find_blocks(den)]
    mixing = Mixing(enabled=True, schedule="constant", value=0.25)
    policy = _policy(unet_pipe, blocks, [[1, 0, 1, 0]] * len(blocks), 4, "hold", mixing=mixing, skip_reuse="taylor1")
    _, (e0, _, e2, e3), _, _ = _steps(unet_pipe, policy, den, 4)
    plain = _policy(unet_pipe, blocks, [[1, 0, 1, 0]] * len(blocks), 4, "hold")
    _, (_, _, _, fr3), _, _ = _steps(unet_pipe, plain, den, 4)
    torch.testing.assert_close(e3, 0.25 * fr3 + 0.75 * (1.5 * e2 - 0.5 * e0), atol=1e-5, rtol=1e-5)


def test_timestep_axis_equals_step_axis_on_evenly_spaced_timesteps(unet_pipe):
    """With trailing spacing over 1000 training steps, step counts that divide 1000 (10, 20, 50) have evenly spaced
    timesteps, where the two axes give the very same weights; 6 steps (999, 832, 666, …) do not."""
    def run(axis, steps):
        policy = make_preset("uniform", unet_pipe.unet, steps, interval=2, reuse="taylor1", forecast_axis=axis)
        gens = [torch.Generator().manual_seed(0)]
        with frdiff.apply(unet_pipe, policy):
            return unet_pipe([2], num_inference_steps=steps, generator=gens, output_type="pt").images

    assert torch.equal(run("step", 10), run("timestep", 10))
    assert not torch.equal(run("step", 6), run("timestep", 6))


def test_version_one_files_load_as_hold_and_run_bit_identically(unet_pipe, tmp_path):
    policy = make_preset("uniform", unet_pipe.unet, 6, interval=2, mix=True)
    doc = policy.to_dict()
    doc["version"] = 1
    for b in doc["blocks"]:
        del b["reuse"]
    for key in ("skip_reuse", "forecast_axis", "cache_dtype"):
        del doc[key]
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    old = Policy.load(tmp_path / "v1.json")
    assert old.reuse == ["hold"] * len(old.blocks) and old.skip_reuse == "hold" and not old.forecasts
    assert old.load_notes == []

    def run(p):
        with frdiff.apply(unet_pipe, p):
            return unet_pipe([1, 4], num_inference_steps=6, generator=[torch.Generator().manual_seed(s) for s in
                                                                        (0, 1)], output_type="pt").images

    assert torch.equal(run(old), run(policy))
    assert json.loads(old.to_json())["version"] == 2 and Policy.from_json(old.to_json()).to_dict() == old.to_dict()


# ---- memory -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset, reuse, cache_dtype, mix", [
    ("uniform", "hold", None, False), ("uniform", "taylor1", None, True), ("uniform", "taylor2", None, True),
    ("uniform", "taylor2", "float16", False), ("reduced-nfe", "taylor2", None, False)])
def test_predicted_cache_bytes_equal_the_bytes_held(random_unet_pipe, preset, reuse, cache_dtype, mix):
    pipe = random_unet_pipe
    den = pipe.unet
    x, t, labels = torch.randn(2, 3, 32, 32), torch.tensor([900, 900]), torch.tensor([0, 6])
    tokens = pipe.class_encoder(labels)
    savings = frdiff.measure_savings(den, None, x, t, encoder_hidden_states=tokens)
    steps = 8
    policy = make_preset(preset, den, steps, interval=2, mix=mix, reuse=reuse, cache_dtype=cache_dtype)
    policy.keyframes[0] = True  # a block computed at every step keeps no cache
    policy.granularity[3] = "block"
    with frdiff.apply(den, policy, check_model=False) as run:
        for s in range(steps):
            den(x + 0.01 * s, t - 10 * s, encoder_hidden_states=tokens)
    measured = run.report().cache_bytes
    assert measured > 0 and frdiff.cache_bytes(policy, savings) == measured
    assert frdiff.cache_bytes(policy, savings, batch=8) == 4 * measured
    if preset == "reduced-nfe":  # every reuse step is skipped: only ε_key is kept (3 full-step outputs)
        assert not any(policy.reusing_blocks()) and measured == 3 * savings["output_numel"] * 2 * 4
