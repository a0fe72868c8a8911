"""The FRDiff engine: exactness of the no-reuse policy, each reuse rule against a manual computation, score mixing,
presets, speedup prediction and hook hygiene."""

import copy
import threading

import pytest
import torch

import frdiff
from frdiff import Mixing, Policy, make_preset
from frdiff.presets import shallow_blocks
from workbench.models.schedulers import make_scheduler

SCHEDULERS = ["ddim", "dpmpp", "euler", "unipc"]


def _run(pipe, steps=6, seeds=(0, 1), labels=(0, 3), **kw):
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(list(labels), num_inference_steps=steps, generator=gens, output_type="pt", **kw).images


def _policy(pipe, blocks, mask, steps, granularity=None, mixing=None):
    den = frdiff.denoiser_of(pipe)
    kinds = dict(frdiff.find_blocks(den))
    return Policy(blocks=blocks, keyframes=torch.tensor(mask, dtype=torch.bool), steps=steps,
                  kinds=[kinds[b] for b in blocks], granularity=granularity, mixing=mixing or Mixing(),
                  model={"architecture": type(den).__name__, "fingerprint": frdiff.model_fingerprint(den)})


# ---- exactness -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["unet_pipe", "dit_pipe"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_none_policy_reproduces_the_stock_pipeline_exactly(fixture, scheduler, request):
    pipe = request.getfixturevalue(fixture)
    before = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler, before.config)
    try:
        ref = _run(pipe)
        with frdiff.apply(pipe, make_preset("none", pipe.denoiser, 6, scheduler=scheduler)) as run:
            out = _run(pipe)
    finally:
        pipe.scheduler = before
    assert torch.equal(ref, out)
    assert run.report().denoiser_calls == 6 and run.report().block_reuses == 0


def test_keyframe_steps_run_the_stock_forward_even_with_reuse_hooks(unet_pipe, dit_pipe):
    """With hooks attached (uniform M=2), step 0 is the stock call bit for bit, and a reuse step fed the very same
    inputs reproduces it up to float rounding (every light path recomputes what the stock forward does)."""
    for pipe in (unet_pipe, dit_pipe):
        den = pipe.denoiser
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([500, 500])
        labels = torch.tensor([1, 6])

        def call(pipe=pipe, x=x, t=t, labels=labels):
            return pipe.denoise(x, t, labels)

        ref = call()
        for gran in ("feature", "block"):
            policy = make_preset("uniform", den, 4, interval=2)
            policy.granularity = [gran] * len(policy.blocks)
            with frdiff.apply(den, policy, check_model=False) as run:
                first, second = call(), call()
            assert torch.equal(first, ref)
            assert run.report().block_reuses == len(policy.blocks)
            torch.testing.assert_close(second, ref, atol=1e-5, rtol=1e-4)


# ---- each reuse rule against a manual computation ------------------------------------------------------------------
def _capture(module):
    """Record each call's (args, kwargs, output) of ``module`` (plain torch hooks)."""
    calls = []
    h1 = module.register_forward_pre_hook(lambda m, a, k: calls.append([a, k, None]), with_kwargs=True)
    h2 = module.register_forward_hook(lambda m, a, o: calls[-1].__setitem__(2, o))
    return calls, (h1, h2)


def _two_steps(pipe, policy, target):
    """Two denoiser calls (steps 0 and 1, different inputs and timesteps) under ``policy``; calls of ``target``."""
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 3, 32, 32, generator=gen) for _ in range(2)]
    ts = [torch.tensor([800, 800]), torch.tensor([760, 760])]
    labels = torch.tensor([2, 6])
    calls, handles = _capture(target)
    try:
        with frdiff.apply(pipe.denoiser, policy, check_model=False):
            outs = [pipe.denoise(x, t, labels) for x, t in zip(xs, ts, strict=True)]
    finally:
        for h in handles:
            h.remove()
    return calls, outs


def test_resnet_reuse_equals_manual_computation(unet_pipe):
    name = "up_blocks.1.resnets.0"  # has a conv shortcut (concatenated skip input) and a time embedding
    block = dict(unet_pipe.unet.named_modules())[name]
    assert block.conv_shortcut is not None
    calls, _ = _two_steps(unet_pipe, _policy(unet_pipe, [name], [[1, 0]], 2), block)
    (a0, _, _), (a1, _, out1) = calls[0], calls[1]
    x0, x1, temb1 = a0[0], a1[0], a1[1]
    silu = torch.nn.functional.silu
    with torch.no_grad():
        cached = block.conv1(silu(block.norm1(x0)))  # the keyframe's heavy part
        h = cached + block.time_emb_proj(silu(temb1))[:, :, None, None]  # current timestep
        h = block.conv2(silu(block.norm2(h)))
        manual = (block.conv_shortcut(x1) + h) / block.output_scale_factor
    torch.testing.assert_close(out1, manual, atol=1e-5, rtol=1e-5)


def test_attention_reuse_is_current_input_plus_cached_residual(unet_pipe):
    name = "down_blocks.1.attentions.0"
    block = dict(unet_pipe.unet.named_modules())[name]
    calls, _ = _two_steps(unet_pipe, _policy(unet_pipe, [name], [[1, 0]], 2), block)
    (a0, _, o0), (a1, _, o1) = calls[0], calls[1]
    first = frdiff.blocks.first_tensor
    torch.testing.assert_close(first(o1), a1[0] + (first(o0) - a0[0]), atol=1e-6, rtol=0)
    assert type(o1) is type(o0)  # the block's output structure is kept


def test_dit_block_reuse_recomputes_adaln_and_mlp(dit_pipe):
    name = "transformer_blocks.2"
    block = dict(dit_pipe.transformer.named_modules())[name]
    calls, _ = _two_steps(dit_pipe, _policy(dit_pipe, [name], [[1, 0]], 2), block)
    (a0, k0, _), (a1, k1, out1) = calls[0], calls[1]
    x0, x1 = a0[0] if a0 else k0["hidden_states"], a1[0] if a1 else k1["hidden_states"]
    with torch.no_grad():
        n0 = block.norm1(x0, k0["timestep"], k0["class_labels"], hidden_dtype=x0.dtype)[0]
        attn0 = block.attn1(n0)  # cached at the keyframe, before gating
        _, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(x1, k1["timestep"], k1["class_labels"],
                                                                  hidden_dtype=x1.dtype)
        h = gate_msa.unsqueeze(1) * attn0 + x1  # gate from the current timestep
        n = block.norm3(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        manual = gate_mlp.unsqueeze(1) * block.ff(n) + h
    torch.testing.assert_close(out1, manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixture,name", [("unet_pipe", "mid_block.resnets.0"), ("dit_pipe", "transformer_blocks.0")])
def test_block_granularity_returns_the_keyframe_output(fixture, name, request):
    pipe = request.getfixturevalue(fixture)
    block = dict(pipe.denoiser.named_modules())[name]
    calls, _ = _two_steps(pipe, _policy(pipe, [name], [[1, 0]], 2, granularity=["block"]), block)
    # the hooked forward returned the cache: the module's own hooks saw the keyframe's output object again
    assert calls[1][2] is calls[0][2]


# ---- score mixing --------------------------------------------------------------------------------------------------
def test_mixing_lambda_follows_the_paper_ramp():
    m = Mixing(enabled=True)
    assert m.lam(0.0) == 0.0 and m.lam(0.43) == 0.0
    assert m.lam(0.5) == pytest.approx(0.5)
    assert m.lam(0.52) == pytest.approx((30 * 0.02 + 2) / 4)
    assert m.lam(0.57) == 1.0 and m.lam(0.99) == 1.0
    s = Mixing(enabled=True, schedule="sigmoid", center=0.3, slope=30)  # σ(−9) < 1e-3 snaps to 0
    assert s.lam(0.3) == pytest.approx(0.5) and s.lam(0.0) == 0.0 and s.lam(1.0) == 1.0
    assert Mixing(enabled=True, schedule="constant", value=0.25).lam(0.9) == 0.25
    assert Mixing(enabled=False).lam(0.0) == 1.0
    curve = Mixing(enabled=True).curve(50)
    assert curve[21] == 0.0 and 0 < curve[23] < 1 and curve[29] == 1.0


def test_mixed_output_is_lambda_weighted_and_lambda_zero_skips_the_call(unet_pipe):
    den = unet_pipe.unet
    x = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ts = [torch.tensor([900, 900]), torch.tensor([600, 600]), torch.tensor([300, 300])]
    labels = torch.tensor([0, 6])
    blocks = [b for b, _ in frdiff.find_blocks(den)]
    mask = [[1, 0, 0]] * len(blocks)

    def calls(mixing):
        with frdiff.apply(den, _policy(unet_pipe, blocks, mask, 3, mixing=mixing), check_model=False) as run:
            return [unet_pipe.denoise(xi, t, labels) for xi, t in zip(x, ts, strict=True)], run.report()

    (key, fr1, fr2), plain = calls(Mixing())
    (k, m1, m2), mixed = calls(Mixing(enabled=True, schedule="constant", value=0.3))
    assert torch.equal(k, key)
    torch.testing.assert_close(m1, 0.3 * fr1 + 0.7 * key, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m2, 0.3 * fr2 + 0.7 * key, atol=1e-6, rtol=1e-6)
    (k, s1, s2), skipped = calls(Mixing(enabled=True, schedule="constant", value=0.0))
    assert torch.equal(s1, key) and torch.equal(s2, key)
    assert (plain.denoiser_calls, skipped.denoiser_calls) == (3, 1)
    assert skipped.step_kinds == ["full", "skip", "skip"] and mixed.lambdas == [1.0, 0.3, 0.3]


# ---- presets -------------------------------------------------------------------------------------------------------
def test_reduced_nfe_on_ddim_equals_ddim_with_fewer_steps(unet_pipe):
    """Reusing ε for a step is DDIM's larger step. With the shipped "trailing" spacing, M=2 at 10 steps computes at
    timesteps 999, 799, …, 199 and reuses down to t = 0: exactly DDIM with 5 steps."""
    steps = 10
    with frdiff.apply(unet_pipe, make_preset("reduced-nfe", unet_pipe.unet, steps, interval=2)) as run:
        reused = _run(unet_pipe, steps=steps)
    assert run.report().denoiser_calls == 5
    assert run.report().timesteps[::2] == [999.0, 799.0, 599.0, 399.0, 199.0]
    sched = copy.deepcopy(unet_pipe.scheduler)
    sched.set_timesteps(5)
    assert sched.timesteps.tolist() == [999, 799, 599, 399, 199]
    fewer = _run(unet_pipe, steps=5)
    torch.testing.assert_close(reused, fewer, atol=1e-4, rtol=0)
    assert not torch.allclose(reused, _run(unet_pipe, steps=steps), atol=1e-2)  # and it is not the 10-step run


def test_presets_masks(unet_pipe, dit_pipe):
    unet = unet_pipe.unet
    u = make_preset("uniform", unet, 7, interval=3)
    assert u.keyframes[0].tolist() == [True, False, False, True, False, False, True]
    assert u.step_kinds() == ["full", "fr", "fr", "full", "fr", "fr", "full"]
    assert make_preset("none", unet, 5).keyframes.all()
    r = make_preset("reduced-nfe", unet, 6, interval=2)
    assert r.step_kinds() == ["full", "skip"] * 3 and r.denoiser_calls() == 3
    d = make_preset("deepcache", unet, 6, interval=2)
    names = d.blocks
    shallow = shallow_blocks(names)
    assert shallow == {n for n in names if n.startswith(("down_blocks.0.", "up_blocks.2."))}
    for i, n in enumerate(names):
        assert d.keyframes[i].all() == (n in shallow)
    assert set(d.granularity) == {"block"}
    dd = make_preset("deepcache", dit_pipe.transformer, 4)
    assert shallow_blocks(dd.blocks) == {"transformer_blocks.0", "transformer_blocks.5"}
    with pytest.raises(ValueError, match="unknown preset"):
        make_preset("fast", unet, 5)
    with pytest.raises(ValueError, match="recorded run"):
        make_preset("threshold", unet, 5)


def test_threshold_keyframes_match_the_analysis_rule():
    from workbench.analysis.similarity import keyframes_for_threshold

    rel = torch.rand(5, 30, generator=torch.Generator().manual_seed(0)) * 0.2
    rel[:, 0] = float("nan")
    mask = frdiff.threshold_keyframes(rel, 0.25)
    for b in range(5):
        assert mask[b].nonzero().flatten().tolist() == keyframes_for_threshold(rel[b].numpy(), 0.25)
    # by hand: changes 0.1 each → accumulated 0.1, 0.2, 0.3 > 0.25 → every 3rd step
    assert frdiff.threshold_keyframes(torch.full((1, 7), 0.1), 0.25)[0].tolist() == [1, 0, 0, 1, 0, 0, 1]


# ---- speedup prediction --------------------------------------------------------------------------------------------
def test_predicted_speedup_from_flop_shares(unet_pipe):
    unet = unet_pipe.unet
    savings = {"feature": {}, "block": {}}
    u = make_preset("uniform", unet, 4, interval=2)
    for b in u.blocks:
        savings["feature"][b] = 0.5 / len(u.blocks)  # reuse saves half a call
    assert frdiff.step_costs(u, savings) == pytest.approx([1, 0.5, 1, 0.5])
    assert frdiff.predicted_speedup(u, savings) == pytest.approx(4 / 3)
    assert frdiff.predicted_speedup(make_preset("reduced-nfe", unet, 4, interval=2), savings) == 2.0
    assert frdiff.predicted_speedup(make_preset("none", unet, 4), savings) == 1.0


def test_measured_savings_are_the_skipped_parts_flops(unet_pipe, dit_pipe):
    from workbench.compare import measure_savings

    s = measure_savings(unet_pipe)
    total = s["total_flops"]
    conv1 = unet_pipe.unet.down_blocks[0].resnets[0].conv1
    # conv FLOPs by hand: 2 · out_ch · in_ch · k² · H · W per image; the measured call is batch 2 (CFG)
    expected = 2 * conv1.out_channels * conv1.in_channels * 9 * 32 * 32 * 2
    assert s["feature"]["down_blocks.0.resnets.0"] * total == pytest.approx(expected)
    assert s["block"]["down_blocks.0.resnets.0"] > s["feature"]["down_blocks.0.resnets.0"]
    assert s["feature"]["down_blocks.1.attentions.0"] == s["block"]["down_blocks.1.attentions.0"]
    d = measure_savings(dit_pipe)
    assert 0 < d["feature"]["transformer_blocks.0"] < d["block"]["transformer_blocks.0"] < 1


# ---- hook hygiene and concurrency ----------------------------------------------------------------------------------
def test_hooks_are_detached_after_success_and_after_failure(unet_pipe):
    forward = unet_pipe.unet.forward
    policy = make_preset("uniform", unet_pipe.unet, 4, interval=2)
    with frdiff.apply(unet_pipe, policy):
        assert frdiff.attached_hooks(unet_pipe)
        _run(unet_pipe, steps=4)
    assert frdiff.attached_hooks(unet_pipe) == []
    with pytest.raises(frdiff.PolicyError, match="policy is for 4 steps but the pipeline runs 6"):
        with frdiff.apply(unet_pipe, policy):
            _run(unet_pipe, steps=6)
    assert frdiff.attached_hooks(unet_pipe) == []
    with pytest.raises(KeyError):
        with frdiff.apply(unet_pipe, policy):
            raise KeyError("boom")
    assert frdiff.attached_hooks(unet_pipe) == []
    assert not any(hasattr(m, "_diffusers_hook") for m in unet_pipe.unet.modules())
    assert unet_pipe.unet.forward == forward  # the stock bound method again
    # and the pipeline is stock again
    ref = _run(unet_pipe, steps=3)
    with frdiff.apply(unet_pipe, make_preset("none", unet_pipe.unet, 3)):
        assert torch.equal(_run(unet_pipe, steps=3), ref)


def test_step_count_is_checked_against_the_scheduler_in_use_at_run_time(unet_pipe):
    from workbench.sampling import sample

    policy = make_preset("uniform", unet_pipe.unet, 5, interval=2)
    unet_pipe.scheduler.set_timesteps(1)  # a stale count on the scheduler that sample() swaps out
    with frdiff.apply(unet_pipe, policy) as run:
        sample(unet_pipe, [0], [0], steps=5, scheduler="euler")
    assert run.report().denoiser_calls == 5


def test_several_runs_inside_one_apply_each_start_afresh(unet_pipe):
    policy = make_preset("uniform", unet_pipe.unet, 4, interval=2)
    with frdiff.apply(unet_pipe, policy) as run:
        a = _run(unet_pipe, steps=4)
        b = _run(unet_pipe, steps=4)
    assert torch.equal(a, b) and run.report().runs == 2


def test_another_thread_cannot_use_a_pipeline_while_a_policy_is_applied(unet_pipe):
    policy = make_preset("uniform", unet_pipe.unet, 4, interval=2)
    errors = []

    def other():
        try:
            _run(unet_pipe, steps=4)
        except RuntimeError as exc:
            errors.append(str(exc))

    def other_apply():
        try:
            with frdiff.apply(unet_pipe, policy, timeout=0.05):
                pass
        except RuntimeError as exc:
            errors.append(str(exc))

    with frdiff.apply(unet_pipe, policy):
        for target in (other, other_apply):
            t = threading.Thread(target=target)
            t.start()
            t.join()
        with pytest.raises(RuntimeError, match="nested policies are not supported"):
            with frdiff.apply(unet_pipe, policy):
                pass
        with frdiff.exclusive(unet_pipe):  # same thread: already held, no deadlock
            pass
    assert "another thread" in errors[0] and "busy" in errors[1]


@pytest.mark.parametrize("timeout", [-1, float("nan"), "5", True])
def test_a_bad_timeout_is_one_message_and_holds_nothing(unet_pipe, timeout):
    policy = make_preset("uniform", unet_pipe.unet, 4, interval=2)
    with pytest.raises(ValueError, match="frdiff.apply: timeout must be None"):
        with frdiff.apply(unet_pipe, policy, timeout=timeout):
            pass
    with pytest.raises(ValueError, match="frdiff.exclusive: timeout must be None"):
        with frdiff.exclusive(unet_pipe, timeout=timeout):
            pass
    assert frdiff.attached_hooks(unet_pipe) == []
    with frdiff.exclusive(unet_pipe, timeout=float("inf")):  # infinity waits, as None does (threading's -1)
        with pytest.raises(ValueError, match="timeout must be None"):  # held here already: still checked
            with frdiff.exclusive(unet_pipe, timeout=timeout):
                pass
    with frdiff.apply(unet_pipe, policy, timeout=0):  # nothing held: the lock is free at once
        pass
    assert frdiff.attached_hooks(unet_pipe) == []


def test_concurrent_runs_of_one_pipeline_take_turns_and_stay_correct(unet_pipe):
    none = make_preset("none", unet_pipe.unet, 4)
    uni = make_preset("uniform", unet_pipe.unet, 4, interval=2)
    with frdiff.apply(unet_pipe, none):
        ref_none = _run(unet_pipe, steps=4)
    with frdiff.apply(unet_pipe, uni):
        ref_uni = _run(unet_pipe, steps=4)
    results = {}

    def worker(name, policy):
        for i in range(2):
            with frdiff.apply(unet_pipe, policy):
                results[(name, i)] = _run(unet_pipe, steps=4)

    threads = [threading.Thread(target=worker, args=a) for a in (("none", none), ("uni", uni))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[("none", i)], ref_none) for i in range(2))
    assert all(torch.equal(results[("uni", i)], ref_uni) for i in range(2))
    assert not torch.equal(ref_none, ref_uni)


# ---- bad input to the API (an audit of frdiff's public names, session 13) ---------------------------------------
def test_a_run_broken_off_inside_apply_does_not_leave_the_next_call_mid_run(random_dit_pipe, monkeypatch):
    """An exception inside a pipeline call, caught inside ``apply``: the next call starts at step 0 (the
    pipeline set new timesteps), not at the broken run's step 1 on its caches (it did, silently: up to 1.0 off)."""
    pipe = random_dit_pipe
    policy = make_preset("uniform", frdiff.denoiser_of(pipe), 4, interval=3)
    with frdiff.apply(pipe, policy):
        fresh = _run(pipe, steps=4)
    step = type(pipe.scheduler).step
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a broken step")
        return step(self, *args, **kwargs)

    with frdiff.apply(pipe, policy) as run:
        monkeypatch.setattr(type(pipe.scheduler), "step", failing)
        with pytest.raises(RuntimeError, match="a broken step"):
            _run(pipe, steps=4)
        again = _run(pipe, steps=4)
        monkeypatch.undo()
    assert torch.equal(again, fresh)
    assert run.report().step_kinds == policy.step_kinds()


def test_policy_fields_are_checked_not_reinterpreted():
    """A 2-D mask of the wrong orientation is reported, not reshaped; steps must be a whole number in range; a
    policy that would not load is not saved; the caller's blocks list is the caller's."""
    blocks = ["a", "b", "c"]
    transposed = Policy(blocks=blocks, keyframes=torch.ones(4, 3, dtype=torch.bool), steps=4)
    assert any("keyframes has shape (4, 3), expected (3 blocks, 4 steps)" in p for p in transposed.problems())
    flat = Policy(blocks=blocks, keyframes=torch.ones(12, dtype=torch.bool), steps=4)
    assert flat.problems() == [] and flat.keyframes.shape == (3, 4)
    blocks.append("d")
    assert flat.blocks == ["a", "b", "c"]
    assert Policy(blocks=["a"], keyframes=torch.ones(1, 2, dtype=torch.bool), steps=2.0).problems() == [
        "steps must be a whole number, got 2.0"]
    huge = Policy(blocks=["a"], keyframes=torch.ones(1, 10_001, dtype=torch.bool), steps=10_001)
    assert "steps must lie in 1..10000, got 10001" in huge.problems()
    with pytest.raises(frdiff.PolicyError, match="steps must lie in 1..10000"):
        huge.save("never-written.json")
    for bad in (2.5, True, 0, 10_001, "20"):
        with pytest.raises(frdiff.PolicyError, match="steps must be a whole number in 1..10000"):
            flat.remap(bad)


def test_odd_policy_json_is_one_policy_error():
    good = Policy(blocks=["a"], keyframes=torch.ones(1, 2, dtype=torch.bool), steps=2).to_json()
    with pytest.raises(frdiff.PolicyError, match="mixing.slope must be a finite number"):
        Policy.from_json(good.replace('"slope": 30.0', '"slope": 1' + "0" * 400))
    assert Policy.from_json(good.encode()).steps == 2 and Policy.from_bytes(good).steps == 2  # either form


def test_threshold_and_preset_inputs_are_checked(random_unet_pipe):
    den = frdiff.denoiser_of(random_unet_pipe)
    for bad_delta in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="threshold must be a number ≥ 0"):
            frdiff.threshold_keyframes(torch.ones(2, 5), bad_delta)
    for rel in ([[0.0, float("nan"), 1.0]], [[0.0, -float("inf"), 5.0]]):
        with pytest.raises(ValueError, match="NaN or negative values"):
            frdiff.threshold_keyframes(torch.tensor(rel), 0.1)
    assert frdiff.threshold_keyframes(torch.tensor([[float("nan"), 0.2, 0.2]]), 0.1).tolist() == [[True] * 3]
    with pytest.raises(ValueError, match=r"rel_l1 must be \[blocks, steps\]"):
        frdiff.threshold_keyframes(torch.ones(5), 0.1)
    for kwargs, message in [({"interval": 2.5}, "interval must be a whole number, got 2.5"),
                            ({"interval": float("nan")}, "interval must be a whole number, got nan"),
                            ({"warmup": 1.5}, "warmup must be a whole number, got 1.5")]:
        with pytest.raises(ValueError, match=message):
            make_preset("uniform", den, 6, **kwargs)
    with pytest.raises(ValueError, match="steps must be a whole number, got 2.5"):
        make_preset("uniform", den, 2.5)
    with pytest.raises(TypeError, match=r"make_preset takes the denoiser \(frdiff.denoiser_of\(pipe\)\)"):
        make_preset("uniform", random_unet_pipe, 6)


def test_regional_graphs_refuse_a_batch_change_inside_a_run(random_dit_pipe):
    """The eager hooks refuse a call whose batch differs from the run's (a cache would not fit it); in regional mode
    the reuse runs inside compiled graphs, which broadcast a batch-1 cache onto batch 2 silently: refused before the
    call, as compile="full" does."""
    den = frdiff.denoiser_of(random_dit_pipe)
    policy = make_preset("uniform", den, 4, interval=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False, compile="regional", backend="eager"):
        den(x[:1], timestep=torch.tensor([999]), class_labels=torch.tensor([0]))
        with pytest.raises(frdiff.PolicyError, match="batch changed from 1 at the run's first step to 2 at step 1"):
            den(x, timestep=torch.tensor([899, 899]), class_labels=torch.tensor([0, 1]))
    assert frdiff.attached_hooks(den) == []


def test_apply_refuses_what_is_not_a_policy_for_this_model(random_unet_pipe, random_dit_pipe):
    """One readable error, nothing attached: a DiT policy on the UNet without the fingerprint check (a KeyError
    before), something that is not a Policy, compile_options that are not a dict."""
    dit_policy = make_preset("uniform", frdiff.denoiser_of(random_dit_pipe), 4)
    with pytest.raises(frdiff.PolicyError, match="names blocks this UNet2DConditionModel does not have: transformer"):
        with frdiff.apply(random_unet_pipe, dit_policy, check_model=False):
            pass
    with pytest.raises(TypeError, match=r"apply takes an frdiff.Policy \(Policy.load\(path\) reads"):
        with frdiff.apply(random_unet_pipe, "policy.json"):
            pass
    unet_policy = make_preset("uniform", frdiff.denoiser_of(random_unet_pipe), 4)
    with pytest.raises(TypeError, match="compile_options is a dict of inductor's options"):
        with frdiff.apply(random_unet_pipe, unet_policy, compile="full", compile_options="cpp_wrapper"):
            pass
    assert frdiff.attached_hooks(random_unet_pipe) == []


def test_predictions_refuse_savings_of_another_model(random_unet_pipe, random_dit_pipe):
    """FLOP shares measured on another model used to predict 1× silently (step_costs read a missing block as 0) and
    raised a KeyError in cache_bytes: both now say what is missing."""
    from workbench.app.runs import savings_of

    unet_policy = make_preset("uniform", frdiff.denoiser_of(random_unet_pipe), 6)
    dit_savings = savings_of(random_dit_pipe)
    for predict in (frdiff.predicted_speedup, frdiff.step_costs, frdiff.cache_bytes):
        with pytest.raises(ValueError, match="the savings have no share for block down_blocks"):
            predict(unet_policy, dit_savings)
    own = savings_of(random_unet_pipe)
    assert frdiff.predicted_speedup(unet_policy, own) > 1
    with pytest.raises(ValueError, match="batch must be a whole number ≥ 1, got -2"):
        frdiff.cache_bytes(unet_policy, own, batch=-2)
