"""Compile mode (issue 19): every policy block as compiled graphs with its reuse rule inside, no graph break in a
block, nothing compiled after the first run, and outputs equal to the eager hooks' (exactly with dynamo's ``eager``
backend, which traces without generating code; within float32 rounding with inductor on the CPU)."""

import pytest
import torch
from diffusers import DiTTransformer2DModel, UNet2DModel

import frdiff
from frdiff.apply import attached_hooks

STEPS = 6


def _dit():
    torch.manual_seed(0)
    return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                 num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()


def _unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8,), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",)).eval()


def _call(den):
    """The denoiser's call at step s, its noisy input and timestep new at every step, as in a sampler (a graph's
    replay must refill both)."""
    torch.manual_seed(1)
    dev, dtype = next(den.parameters()).device, next(den.parameters()).dtype
    t = [torch.tensor([900 - 150 * s] * 2, device=dev) for s in range(STEPS)]
    if isinstance(den, DiTTransformer2DModel):
        x, y = torch.randn(STEPS, 2, 4, 8, 8).to(dev, dtype), torch.tensor([1, 2], device=dev)
        return lambda s: den(x[s], timestep=t[s], class_labels=y).sample
    x = torch.randn(STEPS, 2, 3, 8, 8).to(dev, dtype)
    return lambda s: den(x[s], t[s]).sample


def _runs(den, policy, rounds=2, **kw):
    """``rounds`` runs of ``policy`` (each STEPS denoiser calls on fixed inputs) inside one apply."""
    call, outs = _call(den), []
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False, **kw) as run:
        for _ in range(rounds):
            outs.append(torch.stack([call(s) for s in range(STEPS)]))
    return outs, run.report()


def _policy(den, reuse="hold", granularity="feature", interval=2, mix=True):
    p = frdiff.make_preset("uniform", den, STEPS, interval=interval, reuse=reuse, mix=mix)
    return p.replaced(granularity=[granularity] * len(p.blocks))


@pytest.mark.parametrize("make", [_dit, _unet])
@pytest.mark.parametrize("reuse,granularity", [("hold", "feature"), ("taylor2", "feature"), ("taylor1", "block")])
def test_regional_graphs_trace_the_eager_rules_exactly(make, reuse, granularity):
    den = make()
    policy = _policy(den, reuse, granularity)
    (ref,), eager_report = _runs(den, policy, rounds=1)
    (first, second), report = _runs(den, policy, compile="regional", backend="eager")
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert report.block_reuses == eager_report.block_reuses > 0
    # one graph per block and phase (keep, reuse) in the first run; the second compiles nothing
    assert report.graphs_per_run[1] == 0 and report.graphs_per_run[0] <= 2 * len(policy.blocks)
    assert attached_hooks(den) == [] and all("forward" not in m.__dict__ for m in den.modules())


def test_graphs_are_kept_across_applies_and_policies():
    den = _dit()
    _runs(den, _policy(den, interval=2), rounds=1, compile="regional", backend="eager")
    # another policy with the same phases (M = 3, forecast, no mixing) finds every graph compiled
    _, report = _runs(den, _policy(den, "taylor2", interval=3, mix=False), rounds=1, compile="regional",
                      backend="eager")
    assert report.graphs_per_run == [0]
    none = frdiff.make_preset("none", den, STEPS)
    (stock,), report = _runs(den, none, rounds=1, compile="regional", backend="eager")
    call = _call(den)
    with torch.no_grad():
        assert torch.equal(stock, torch.stack([call(s) for s in range(STEPS)]))  # the none policy: stock model
    assert report.graphs_per_run[0] == len(none.blocks)  # the stock forward: one graph per block


@pytest.mark.parametrize("make", [_dit, _unet])
def test_inductor_on_the_cpu_matches_eager_and_does_not_recompile(make):
    den = make()
    policy = _policy(den, "taylor2", "feature", interval=2, mix=True)
    (ref,), _ = _runs(den, policy, rounds=1)
    (first, second), report = _runs(den, policy, compile="regional")
    torch.testing.assert_close(first, ref, atol=1e-4, rtol=1e-4)  # float32: inductor reorders reductions
    assert torch.equal(second, first) and report.graphs_per_run[1] == 0


def test_bad_compile_arguments_get_one_clear_message():
    den = _dit()
    policy = _policy(den)
    with pytest.raises(ValueError, match="compile must be one of off, regional, full"):
        with frdiff.apply(den, policy, check_model=False, compile="whole"):
            pass
    for compile in ("off", "full"):
        with pytest.raises(ValueError, match="cuda_graphs='blocks' needs compile='regional'"):
            with frdiff.apply(den, policy, check_model=False, compile=compile, cuda_graphs=True):
                pass
    attn = dict(den.named_modules())[policy.blocks[0]].attn1  # what compile="full" hooks in a DiT block
    for module in (dict(den.named_modules())[policy.blocks[0]], attn):
        module.forward = module.forward  # another tool's hook: an instance forward
        try:
            for compile in ("regional",) if module is not attn else ("full",):
                with pytest.raises(RuntimeError, match="already has a hook on its forward"):
                    with frdiff.apply(den, policy, check_model=False, compile=compile, backend="eager"):
                        pass
        finally:
            del module.forward
    assert attached_hooks(den) == [] and all("forward" not in m.__dict__ for m in den.modules())


@pytest.mark.parametrize("make", [_dit, _unet])
@pytest.mark.parametrize("reuse,granularity", [("hold", "feature"), ("taylor2", "feature"), ("taylor1", "block")])
def test_full_graphs_trace_the_eager_rules_exactly(make, reuse, granularity):
    """compile="full": each step configuration one graph of the whole denoiser call (M = 2: full and all-reuse),
    the rules inline — bit-identical to the eager hooks with dynamo's eager backend. The first run allocates the
    caches in an eager first step and compiles the two graphs; its second run, and an M = 3 policy of the same
    structure in a later apply, compile nothing."""
    den = make()
    policy = _policy(den, reuse, granularity)
    (ref,), eager = _runs(den, policy, rounds=1)
    (first, second), report = _runs(den, policy, compile="full", backend="eager")
    assert torch.equal(first, ref) and torch.equal(second, ref)
    assert report.graphs_per_run == [2, 0] and report.block_reuses == eager.block_reuses > 0
    assert attached_hooks(den) == [] and all("forward" not in m.__dict__ for m in den.modules())
    three = _policy(den, reuse, granularity, interval=3, mix=False)
    (ref3,), _ = _runs(den, three, rounds=1)
    (got3,), report = _runs(den, three, rounds=1, compile="full", backend="eager")
    assert torch.equal(got3, ref3) and report.graphs_per_run == [0]
    frdiff.release_step_graphs(den)


def test_full_graphs_with_inductor_on_the_cpu_match_eager_and_the_stock_model():
    """Inductor's code for the whole call, cache writes into the static buffers included, within float32 rounding
    of the eager hooks; the no-reuse policy is the stock model compiled as one graph (its baseline), nothing
    recompiles."""
    den = _dit()
    policy = _policy(den, "taylor2", "feature", mix=True)
    (ref,), _ = _runs(den, policy, rounds=1)
    (first, second), report = _runs(den, policy, compile="full")
    # (the first run's first step is eager: it allocates the caches; the second run's is compiled)
    torch.testing.assert_close(first, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(second, ref, atol=1e-4, rtol=1e-4)
    assert report.graphs_per_run == [2, 0]
    call = _call(den)
    with torch.no_grad():
        stock = torch.stack([call(s) for s in range(STEPS)])
    (none,), report = _runs(den, frdiff.make_preset("none", den, STEPS), rounds=1, compile="full")
    torch.testing.assert_close(none, stock, atol=1e-4, rtol=1e-4)
    assert report.graphs_per_run == [1]
    frdiff.release_step_graphs(den)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make,compile", [(_dit, "full"), (_unet, "regional")])
def test_compiled_half_precision_matches_the_eager_hooks_within_the_stated_tolerance(make, compile, dtype):
    """fp16 and bf16 with inductor on the CPU, taylor2 forecasts and score mixing over 6 steps: the compiled policy
    differs from the same policy's eager hooks in the same dtype by at most 4 units of the format's precision (eps:
    2^-10 for fp16, 2^-7 for bf16) at the output's scale — inductor keeps a fused kernel's intermediates in float32
    where eager rounds after every op. Measured: 2.2e-3 / 1.6e-2 (DiT, full) and 2.4e-3 / 2.1e-2 (UNet, regional)
    at output scales 1.7 and 1.1. The same bound is docs/engine.md's stated half-precision tolerance."""
    den = make().to(dtype)
    policy = _policy(den, "taylor2", "feature", mix=True)
    (ref,), _ = _runs(den, policy, rounds=1)
    (got,), report = _runs(den, policy, rounds=1, compile=compile)
    assert got.dtype == dtype and report.graphs_per_run[0] > 0
    scale = ref.float().abs().max()
    err = (got.float() - ref.float()).abs().max()
    assert err <= 4 * torch.finfo(dtype).eps * scale, (err, scale)
    frdiff.release_step_graphs(den)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (CI has none; "
                    "bench gpu-speed measures them on the GPU)")
def test_cuda_graphs_replay_the_compiled_policy():
    den = _dit().cuda()
    policy = _policy(den, "taylor2", "feature")
    call = _call(den)
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False):
        ref = torch.stack([call(s).clone() for s in range(STEPS)])
    torch._dynamo.utils.counters.clear()
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False, compile="regional", cuda_graphs=True) as run:
        for _ in range(3):
            got = torch.stack([call(s).clone() for s in range(STEPS)])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert run.report().graphs_per_run[-1] == 0
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == 0  # graphs, not a silent eager fallback


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (CI has none; "
                    "bench gpu-speed measures them on the GPU)")
@pytest.mark.parametrize("compile", ["off", "full"])
def test_step_graphs_take_a_stock_ddim_pipelines_cpu_timestep(compile):
    """A stock DDIMPipeline passes its 0-d timestep on the CPU, which the UNet uploads itself: a blocking copy that
    a capture refuses. The step graphs keep a GPU copy of it, refilled without a sync; the images equal the same
    mode's run without graphs, and a second call captures nothing."""
    from diffusers import DDIMPipeline, DDIMScheduler

    unet = _unet().cuda()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    policy = _policy(unet, "taylor2", "feature", mix=True)

    def images(**kw):
        with torch.no_grad(), frdiff.apply(pipe, policy, **kw) as run:
            out = pipe(batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                       output_type="np").images
        return torch.from_numpy(out), run.report().captures_per_run

    ref, _ = images(compile=compile)
    for expected in ([2], [0]):
        got, captures = images(compile=compile, cuda_graphs="step")
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        assert captures == expected
    frdiff.release_step_graphs(pipe)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (CI has none; "
                    "bench gpu-speed measures them on the GPU)")
@pytest.mark.parametrize("make", [_dit, _unet])
@pytest.mark.parametrize("compile", ["off", "regional", "full"])
@pytest.mark.parametrize("reuse", ["hold", "taylor2"])
def test_step_graphs_on_cuda_replay_the_eager_run(make, compile, reuse):
    """Real whole-step CUDA graphs: replays equal the same mode's run without graphs — bit for bit with hold (the
    same kernels); with forecasts, whose weights the graphs read from a device buffer instead of Python floats, and
    in compile="full", whose first run's first step is eager but a later apply's is compiled, within float32
    rounding — and no capture after the first apply."""
    den = make().cuda()
    policy = _policy(den, reuse, "feature", mix=True)
    (ref,), _ = _runs(den, policy, rounds=1, compile=compile)  # the same kernels, launched one by one
    outs, reports = _rounds_in_separate_applies(den, policy, compile=compile, cuda_graphs="step")
    for got in outs:
        if reuse == "hold" and compile != "full":
            assert torch.equal(got, ref)
        else:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert [r.captures_per_run for r in reports] == [[2], [0], [0]]
    frdiff.release_step_graphs(den)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are CUDA's (CI has none; the GPU runs it)")
@pytest.mark.parametrize("make", [_dit, _unet])
@pytest.mark.parametrize("compile,graphs", [("off", False), ("regional", "step"), ("full", "step")])
def test_the_step_loop_never_waits_on_the_gpu(make, compile, graphs):
    """No host sync in a warmed-up run's denoiser calls: ``torch.cuda.set_sync_debug_mode("error")`` raises at one
    (an ``.item()``, a ``bool`` of a device value, a copy from pageable memory). Which blocks compute, the forecast
    weights and score mixing come from the static policy, never read back from the device — eager hooks, regional
    and whole-call graphs, with taylor2 forecasts and mixing, on a DiT and a UNet."""
    den = make().cuda()
    policy = _policy(den, "taylor2", "feature", mix=True)
    call = _call(den)
    kw = {"compile": compile, **({"cuda_graphs": graphs} if graphs else {})}
    for strict in (False, True):  # the first apply compiles, captures and allocates; a later one must not sync
        with torch.no_grad(), frdiff.apply(den, policy, check_model=False, **kw):
            torch.cuda.set_sync_debug_mode("error" if strict else "default")
            try:
                outs = [call(s) for s in range(STEPS)]
            finally:
                torch.cuda.set_sync_debug_mode("default")
    assert len(outs) == STEPS and all(bool(torch.isfinite(o).all()) for o in outs)
    frdiff.release_step_graphs(den)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (CI has none; "
                    "bench gpu-speed measures them on the GPU)")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_step_graphs_on_cuda_forecast_in_half_precision(dtype):
    """Captured taylor2 forecasts in fp16 / bf16 against the eager hooks: a 0-d float32 weight is rounded to the
    values' dtype inside ``lerp`` and ``mul`` (a Python float is not), so the two differ by that rounding, within
    the stated tolerance (1e-2 relative, the half formats' few bits)."""
    den = _dit().cuda().to(dtype)
    policy = _policy(den, "taylor2", "feature", mix=True)
    torch.manual_seed(1)
    x, y = torch.randn(2, 4, 8, 8, device="cuda", dtype=dtype), torch.tensor([1, 2], device="cuda")
    t = [torch.tensor([900 - 150 * s] * 2, device="cuda") for s in range(STEPS)]

    def run(**kw):
        with torch.no_grad(), frdiff.apply(den, policy, check_model=False, **kw):
            return torch.stack([den(x, timestep=t[s], class_labels=y).sample for s in range(STEPS)]).float()

    ref = run()
    for _ in range(2):
        torch.testing.assert_close(run(cuda_graphs="step"), ref, rtol=1e-2, atol=1e-2)
    frdiff.release_step_graphs(den)


@pytest.mark.parametrize("compile", ["regional", "full"])
def test_compare_in_compile_mode_warms_up_then_times_without_recompiling(dit_pipe, compile):
    from workbench.compare import Variant, compare

    policy = frdiff.make_preset("uniform", dit_pipe.denoiser, 4, interval=2)
    eager = compare(dit_pipe, [Variant("fr", policy)], [0, 1], [0, 1], steps=4)
    res = compare(dit_pipe, [Variant("fr", policy)], [0, 1], [0, 1], steps=4, repeats=2, compile=compile,
                  backend="eager")
    v = res["variants"][0]
    assert res["recompiles"] == 0 and v["warmup_s"] > 0 and res["reference"]["warmup_s"] > 0
    assert v["psnr"] == eager["variants"][0]["psnr"] and v["block_reuses"] == eager["variants"][0]["block_reuses"]


def test_cli_refuses_cuda_graphs_without_compile(capsys):
    from workbench.cli import main

    assert main(["run", "--model", "tiny-dit", "--preset", "uniform", "--steps", "4", "--seeds", "0",
                 "--cuda-graphs"]) != 0
    assert "--cuda-graphs blocks needs --compile regional" in capsys.readouterr().err
    assert main(["run", "--model", "tiny-dit", "--preset", "uniform", "--steps", "4", "--seeds", "0",
                 "--compile", "full", "--cuda-graphs", "blocks"]) != 0
    assert "--cuda-graphs blocks needs --compile regional" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["run", "--model", "tiny-dit", "--preset", "uniform", "--steps", "4", "--seeds", "0",
                     "--cuda-graphs", "step"]) != 0
        assert capsys.readouterr().err.strip() == "error: --cuda-graphs needs a CUDA device; this run is on cpu"


def test_identical_blocks_share_their_graphs():
    """Six identical DiT blocks compile the graphs of one (a phase × the first block's differently strided input),
    not six blocks' worth; a second model of the same kind compiles nothing (the runners are per kind of block)."""
    def six():
        torch.manual_seed(0)
        return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4, out_channels=4,
                                     num_layers=6, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()

    den = six()
    policy = _policy(den)
    (ref,), _ = _runs(den, policy, rounds=1)
    (first,), report = _runs(den, policy, rounds=1, compile="regional", backend="eager")
    assert torch.equal(first, ref)
    assert 2 <= report.graphs_per_run[0] <= 4 < 2 * len(policy.blocks)
    other = six()
    (again,), report = _runs(other, policy, rounds=1, compile="regional", backend="eager")
    assert torch.equal(again, ref) and report.graphs_per_run == [0]


@pytest.fixture
def fake_step_graphs(monkeypatch):
    """cuda_graphs="step" on the CPU: "replaying" a step reruns it on the captured static inputs and cache buffers
    (frdiff.compiling.StepGraphs(fake=True)): the plumbing a CUDA graph relies on, without a GPU."""
    import importlib

    monkeypatch.setattr(importlib.import_module("frdiff.apply"), "_FAKE_STEP_GRAPHS", True)


def _buffer_addresses(den) -> list[int]:
    graphs = list(den.__dict__["_frdiff_step_graphs"].values())[-1]  # the apply's just now (most recent last)
    return [cache[0][0].data_ptr() for cache in graphs.buffers]


def _rounds_in_separate_applies(den, policy, rounds=3, **kw):
    call, outs, reports, addresses = _call(den), [], [], []
    for _ in range(rounds):
        with torch.no_grad(), frdiff.apply(den, policy, check_model=False, **kw) as run:
            outs.append(torch.stack([call(s) for s in range(STEPS)]))
        reports.append(run.report())
        addresses.append(_buffer_addresses(den))
    assert addresses[0] and all(a == addresses[0] for a in addresses)  # one buffer per block, written in place
    return outs, reports


def test_a_pipelines_reset_of_its_hooks_keeps_the_captured_buffers(fake_step_graphs):
    """A stock pipeline ends each call with ``maybe_free_model_hooks``, which resets stateful hooks (CacheMixin
    models: Flux, SD3, …). A captured step reads and writes its cache buffers by address, so the reset keeps them:
    the next run replays into the same buffers, and equals the eager run."""
    den = _dit()
    policy = _policy(den, "taylor2", "feature", mix=True)
    call = _call(den)
    with torch.no_grad():
        (ref,), _ = _runs(den, policy, rounds=1)
        with frdiff.apply(den, policy, check_model=False, cuda_graphs="step") as run:
            outs, addresses = [], []
            for _ in range(2):
                outs.append(torch.stack([call(s) for s in range(STEPS)]))
                hooks = [h for m in den.modules() if hasattr(m, "_diffusers_hook")
                         for h in m._diffusers_hook.hooks.values() if hasattr(h, "cached_tensors")]
                addresses.append([t.data_ptr() for h in hooks for t in h.cached_tensors()])
                den._diffusers_hook.reset_stateful_hooks()  # as the pipeline's maybe_free_model_hooks would
    assert all(torch.equal(o, ref) for o in outs)
    assert addresses[0] and addresses[1] == addresses[0] and run.report().captures_per_run == [2, 0]
    frdiff.release_step_graphs(den)


@pytest.mark.parametrize("make", [_dit, _unet])
@pytest.mark.parametrize("compile", ["off", "regional", "full"])
@pytest.mark.parametrize("granularity", ["feature", "block"])
def test_step_graphs_replay_the_eager_run_from_static_buffers(make, compile, granularity, fake_step_graphs):
    """Whole-step graphs: one capture per distinct step configuration (here full and reuse: M = 2), kept across
    applies of the same policy with their cache buffers, every replay equal to the eager hooks' run bit for bit."""
    den = make()
    policy = _policy(den, "hold", granularity, mix=True)
    (ref,), eager = _runs(den, policy, rounds=1)
    outs, reports = _rounds_in_separate_applies(den, policy, compile=compile, backend="eager", cuda_graphs="step")
    assert all(torch.equal(o, ref) for o in outs)
    assert [r.captures_per_run for r in reports] == [[2], [0], [0]]
    assert all(r.block_reuses == eager.block_reuses > 0 for r in reports)
    assert all(r.cache_bytes == eager.cache_bytes > 0 for r in reports)  # kept buffers count in every run
    frdiff.release_step_graphs(den)
    assert "_frdiff_step_graphs" not in den.__dict__ and attached_hooks(den) == []


def test_step_graphs_capture_each_batch_once_and_keep_both(fake_step_graphs):
    """The same policy at another batch size: its graphs and cache buffers are made for it (a buffer of the old
    batch would be broadcast into silently), and the output equals the eager run at that size. Both sizes are kept:
    runs that alternate (seeds in batches with a smaller last one) capture each size once."""
    den = _dit()
    policy = _policy(den, "hold", "feature", mix=True)
    call = _call(den)
    with torch.no_grad():
        (ref,), _ = _runs(den, policy, rounds=1)
        torch.manual_seed(2)
        x1, y1 = torch.randn(1, 4, 8, 8), torch.tensor([3])
        t1 = [torch.tensor([900 - 150 * s]) for s in range(STEPS)]
        with frdiff.apply(den, policy, check_model=False):
            ref1 = torch.stack([den(x1, timestep=t1[s], class_labels=y1).sample for s in range(STEPS)])
        got, reports = [], []
        for one in (False, True, False, True):
            with frdiff.apply(den, policy, check_model=False, cuda_graphs="step") as run:
                got.append(torch.stack([den(x1, timestep=t1[s], class_labels=y1).sample if one else call(s)
                                        for s in range(STEPS)]))
            reports.append(run.report().captures_per_run)
    assert torch.equal(got[0], ref) and torch.equal(got[1], ref1) and torch.equal(got[2], ref)
    assert torch.equal(got[3], ref1)
    assert reports == [[2], [2], [0], [0]]  # each batch size captured once
    frdiff.release_step_graphs(den)


def test_step_graphs_keep_up_to_four_batch_sizes(fake_step_graphs):
    """Kept run signatures are bounded (``MAX_SIGNATURES``): a fifth batch size drops the oldest one's graphs and
    buffers, which a later run of that size captures again; the others are still replayed."""
    from frdiff.compiling import MAX_SIGNATURES

    den = _dit()
    policy = _policy(den, "taylor2", "feature", mix=True)
    ts = [torch.tensor(900.0 - 150 * s) for s in range(STEPS)]

    def run(batch, **kw):
        torch.manual_seed(batch)
        x, y = torch.randn(batch, 4, 8, 8), torch.arange(batch)
        with frdiff.apply(den, policy, check_model=False, **kw) as r:
            out = torch.stack([den(x, timestep=t.expand(batch), class_labels=y).sample for t in ts])
        return out, r.report().captures_per_run

    sizes = [1, 2, 3, 4, 5, 1, 5]
    with torch.no_grad():
        got = [run(b, cuda_graphs="step") for b in sizes]
        for b, (out, _) in zip(sizes, got, strict=True):
            assert torch.equal(out, run(b)[0])
    assert MAX_SIGNATURES == 4 and [n for _, n in got] == [[2]] * 6 + [[0]]  # 1 was dropped for 5, not 5
    frdiff.release_step_graphs(den)


def test_step_graphs_keep_buffers_apart_for_inference_mode_and_no_grad(fake_step_graphs):
    """A buffer made under ``torch.inference_mode`` cannot be written outside it: a run under ``no_grad`` after one
    under ``inference_mode`` (and back) gets buffers of its own, with forecasts (their weights buffer, written at
    every step, is made outside inference mode), and each mode is captured once."""
    den = _dit()
    policy = _policy(den, "taylor2", "feature", mix=True)
    call = _call(den)
    with torch.no_grad():
        (ref,), _ = _runs(den, policy, rounds=1)
    got = []
    for mode in (torch.inference_mode, torch.no_grad, torch.inference_mode, torch.no_grad):
        with mode(), frdiff.apply(den, policy, check_model=False, cuda_graphs="step") as run:
            got.append(torch.stack([call(s) for s in range(STEPS)]))
        assert torch.equal(got[-1], ref)
        got[-1] = run.report().captures_per_run
    assert got == [[2], [2], [0], [0]]
    frdiff.release_step_graphs(den)


def test_step_graphs_capture_again_where_the_weights_moved(fake_step_graphs):
    """A captured graph reads the weights by address: after ``load_state_dict(assign=True)`` (as ``pipe.to()`` or
    offloading would) the next run captures afresh, keeps nothing of the old graphs, and uses the new weights."""
    from frdiff.apply import step_graphs_of

    den = _dit()
    policy = _policy(den, "hold", "feature", mix=True)
    _runs(den, policy, rounds=1, cuda_graphs="step")
    _runs(den, policy, rounds=1, cuda_graphs="step", compile="off")
    with torch.no_grad():
        den.load_state_dict({k: v * 1.01 for k, v in den.state_dict().items()}, assign=True)
        (ref,), _ = _runs(den, policy, rounds=1)
    (out,), report = _runs(den, policy, rounds=1, cuda_graphs="step")
    assert report.captures_per_run == [2] and torch.equal(out, ref)
    graphs = step_graphs_of(den, policy, "off", "inductor", True)
    assert len(graphs.graphs) == 2 and graphs.stashed == {}
    frdiff.release_step_graphs(den)


@pytest.mark.parametrize("kw", [{"cuda_graphs": "step"}, {"compile": "full", "backend": "eager"}])
def test_static_caches_count_their_bytes_once_over_several_runs(kw, fake_step_graphs):
    """Three runs in one apply with static caches (kept from run to run) and mixing (an ε history): the report's
    cache bytes are the eager run's, not growing by a stale ε history per run."""
    den = _dit()
    policy = _policy(den, "taylor2", "feature", mix=True)
    _, eager = _runs(den, policy, rounds=3)
    _, report = _runs(den, policy, rounds=3, **kw)
    assert report.cache_bytes == eager.cache_bytes > 0
    frdiff.release_step_graphs(den)


def test_step_graphs_keep_the_callers_strides_and_compile_nothing_more(fake_step_graphs):
    """A pipeline broadcasts the timestep to the batch (stride 0). The static inputs keep the caller's strides, so
    whole-step graphs over compile="full" reuse the graphs a run without CUDA graphs compiled (on the H200 a plain
    clone recompiled every configuration of DiT-XL/2: minutes); a replay refills the broadcast element; a call whose
    timestep is a dense tensor of the same shape is another input layout, compiled and captured apart, not read as
    broadcast."""
    den = _dit()
    policy = _policy(den, "hold", "feature", mix=True)
    torch.manual_seed(1)
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    ts = [torch.tensor(900.0 - 150 * s) for s in range(STEPS)]

    def run(dense=False, **kw):
        with torch.no_grad(), frdiff.apply(den, policy, check_model=False, **kw) as r:
            out = torch.stack([den(x, timestep=t.repeat(2) if dense else t.expand(2), class_labels=y).sample
                               for t in ts])
        return out, r.report()

    ref, _ = run()
    _, compiled = run(compile="full", backend="eager")
    assert compiled.graphs_per_run == [2]
    for dense, graphs, captures in [(False, [0], [2]), (False, [0], [0]), (True, [2], [2])]:
        got, report = run(dense, compile="full", backend="eager", cuda_graphs="step")
        assert torch.equal(got, ref)
        assert report.graphs_per_run == graphs and report.captures_per_run == captures
    frdiff.release_step_graphs(den)


def test_step_graphs_of_a_broken_run_are_dropped(fake_step_graphs):
    den = _dit()
    policy = _policy(den)
    call = _call(den)
    with pytest.raises(KeyboardInterrupt), torch.no_grad(), frdiff.apply(den, policy, check_model=False,
                                                                            cuda_graphs="step"):
        call(0), call(1)
        raise KeyboardInterrupt  # a user stopping the run between steps
    assert den.__dict__["_frdiff_step_graphs"] == {} and attached_hooks(den) == []
    outs, reports = _rounds_in_separate_applies(den, policy, rounds=2, cuda_graphs="step")
    (ref,), _ = _runs(den, policy, rounds=1)
    assert all(torch.equal(o, ref) for o in outs) and reports[0].captures_per_run == [2]


@pytest.mark.parametrize("make", [_dit, _unet])
@pytest.mark.parametrize("compile", ["off", "regional", "full"])
@pytest.mark.parametrize("reuse,granularity", [("taylor1", "feature"), ("taylor2", "feature"), ("taylor2", "block")])
def test_step_graphs_capture_forecasts(make, compile, reuse, granularity, fake_step_graphs):
    """Captured forecasts: a block's last keyframe values in fixed slots (shifted at each keyframe) and this step's
    weights in a device buffer, so one capture per configuration serves every step of it — the replays equal the
    eager hooks' forecasts, whose weights are Python floats, over 3 applies. M = 2 over 6 steps: keyframes 0, 2, 4,
    so step 1 holds (one keyframe), step 3 is a line and step 5 (taylor2) a parabola through three."""
    den = make()
    policy = _policy(den, reuse, granularity, mix=True)
    (ref,), eager = _runs(den, policy, rounds=1)
    (held,), _ = _runs(den, _policy(den, "hold", granularity, mix=True), rounds=1)
    assert not torch.allclose(ref[3:], held[3:], atol=1e-4)  # the forecasts are not the held values
    outs, reports = _rounds_in_separate_applies(den, policy, compile=compile, backend="eager", cuda_graphs="step")
    for out in outs:
        assert torch.equal(out, ref)  # float32: a 0-d float32 weight is the Python float rounded alike
    assert [r.captures_per_run for r in reports] == [[2], [0], [0]]
    assert all(r.block_reuses == eager.block_reuses > 0 for r in reports)
    frdiff.release_step_graphs(den)


@pytest.mark.parametrize("compile", ["off", "full"])
def test_step_graphs_capture_mixed_orders_timestep_positions_and_skips(compile, fake_step_graphs):
    """Blocks of different orders share the weights buffer (taylor2, taylor1, hold by block); forecasts in the
    scheduler's timesteps (uneven here), whose weights are a table per set of positions; a skipped step between the
    captured ones, where block 0's mask marks a keyframe that never happens (no call). Every replay equals the eager
    run."""
    from diffusers import DDIMScheduler

    from frdiff.policy import Mixing

    torch.manual_seed(0)
    den = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    base = frdiff.make_preset("uniform", den, STEPS, interval=2, reuse="taylor2")
    keyframes = torch.zeros(3, STEPS, dtype=torch.bool)
    keyframes[:, [0, 4]] = True
    keyframes[0, [1, 2]] = True  # block 0: 0, (1: skipped), 2, 4; block 1: 0, 3, 4; block 2: 0, 2, 4
    keyframes[1, 3] = keyframes[2, 2] = True
    policy = base.replaced(reuse=["taylor2", "taylor1", "hold"], forecast_axis="timestep", keyframes=keyframes,
                           mixing=Mixing(enabled=True, center=0.3))
    kinds = ["full", "skip", "fr", "fr", "full", "fr"]
    assert policy.step_kinds() == kinds and 0 < policy.step_lambdas()[2] < 1
    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(STEPS)
    sched.timesteps = torch.tensor([999, 850, 600, 420, 200, 40])

    class Pipe:  # a denoiser with the scheduler whose timesteps the forecasts use
        scheduler = sched
        transformer = den

    call = _call(den)
    with torch.no_grad():
        with frdiff.apply(Pipe, policy, check_model=False):
            ref = torch.stack([call(s) for s in range(STEPS)])  # a skipped step's call returns ε_key
        outs = []
        for _ in range(3):
            with frdiff.apply(Pipe, policy, check_model=False, compile=compile, backend="eager",
                              cuda_graphs="step") as run:
                outs.append(torch.stack([call(s) for s in range(STEPS)]))
    for out in outs:
        assert torch.equal(out, ref)  # float32: a 0-d float32 weight is the Python float rounded alike
    assert run.report().step_kinds == kinds and run.report().captures_per_run == [0]
    frdiff.release_step_graphs(den)


@pytest.mark.parametrize("mode", [dict(cuda_graphs="step"), dict(compile="full", backend="eager")])
def test_static_modes_follow_each_policys_step_kinds(mode, fake_step_graphs):
    """Two policies alike but for mixing (which steps call the denoiser, hence each block's keyframes and the
    forecast weights) keep graphs, buffers and weights of their own: each equals its eager run, whichever ran
    first."""
    from frdiff.policy import Mixing

    den = _dit()
    call = _call(den)

    def run(policy, **kw):
        with torch.no_grad(), frdiff.apply(den, policy, check_model=False, **kw):
            return torch.stack([call(s) for s in range(STEPS)])

    forecasting = torch.zeros(2, STEPS, dtype=torch.bool)  # taylor1: step 1 skipped or not moves block 0's keyframes
    forecasting[:, [0, 4]] = True
    forecasting[0, 1] = forecasting[1, 2] = True
    holding = torch.ones(2, STEPS, dtype=torch.bool)  # hold: block 0 reuses at step 1 only, which mixing skips
    holding[0, 1] = holding[1, 2] = False
    for reuse, keyframes in (("taylor1", forecasting), ("hold", holding)):
        base = frdiff.make_preset("uniform", den, STEPS, interval=2, reuse=reuse).replaced(keyframes=keyframes)
        mixed, plain = base.replaced(mixing=Mixing(enabled=True, center=0.3)), base
        assert mixed.step_kinds()[1] == "skip" and plain.step_kinds()[1] == "fr"
        refs = {"mixed": run(mixed), "plain": run(plain)}
        for name, policy in [("mixed", mixed), ("plain", plain), ("mixed", mixed), ("plain", plain)]:
            assert torch.equal(run(policy, **mode), refs[name]), (reuse, name)
        frdiff.release_step_graphs(den)


def test_static_modes_refuse_a_python_number_timestep(fake_step_graphs):
    """A Python-number timestep would be a constant of each graph (one graph, or capture, per step): one clear
    error instead."""
    den = _dit()
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    for mode in (dict(cuda_graphs="step"), dict(compile="full", backend="eager")):
        with pytest.raises(frdiff.PolicyError, match="need the timestep as a tensor; this call passes int 999"):
            with torch.no_grad(), frdiff.apply(den, _policy(den), check_model=False, **mode):
                den(x, timestep=999, class_labels=y)
        assert attached_hooks(den) == []


def test_stale_slots_of_an_earlier_run_cannot_reach_a_forecast(fake_step_graphs):
    """The kept slots are zeroed at a run's start: an earlier run's non-finite value, weighed 0 while the new run
    has one keyframe, would otherwise make NaN (0·inf). The caches' bytes count in every run, also after a change
    of batch drops the kept buffers."""
    den = _dit()
    policy = _policy(den, "taylor2", "feature", mix=False)
    (ref,), eager = _runs(den, policy, rounds=1)
    _rounds_in_separate_applies(den, policy, rounds=1, cuda_graphs="step")
    (graphs,) = den.__dict__["_frdiff_step_graphs"].values()
    for cache in graphs.buffers:
        for value, _ in cache:
            value.fill_(float("inf"))
    outs, reports = _rounds_in_separate_applies(den, policy, rounds=1, cuda_graphs="step")
    assert torch.equal(outs[0], ref) and reports[0].cache_bytes == eager.cache_bytes
    x4, y4 = torch.randn(4, 4, 8, 8), torch.tensor([3, 4, 5, 6])
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False, cuda_graphs="step") as run:
        for s in range(STEPS):
            den(x4, timestep=torch.tensor([900 - 150 * s] * 4), class_labels=y4)
    # batch 4: twice batch 2's bytes (the dropped batch-2 buffers no longer count), not three times
    assert run.report().cache_bytes == 2 * eager.cache_bytes
    frdiff.release_step_graphs(den)


def test_static_forecast_weights_follow_each_blocks_keyframes():
    """The weights a captured step reads, by hand: block 0 (taylor2) keyframes at steps 0, 2, 4 on positions
    0, 1, 3, 4, 6, 7; block 1 (taylor1) at 0 and 3; step 5 is skipped (no call: no keyframe there)."""
    from frdiff.reuse import static_forecast_weights

    mask = [[True, False, True, False, True, False, False],
            [True, False, False, True, False, True, False]]
    called = [True] * 5 + [False, True]
    table = static_forecast_weights(mask, [2, 1], called, [0, 1, 3, 4, 6, 7, 9])
    assert table[1] == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]  # one keyframe each: hold
    # step 3, block 0: the line through (3, v0) and (0, v1) at 4 -> v0 + (1/3)(v0 - v1)
    assert table[3][0] == pytest.approx([4 / 3, -1 / 3, 0.0])
    # step 6, block 0: the parabola through x = 6, 3, 0 at 9 -> weights 3, -3, 1
    assert table[6][0] == pytest.approx([3.0, -3.0, 1.0])
    # step 6, block 1: keyframes at 4 (x 4) and... step 5 is skipped, so its mask does not count: line through 4, 0
    assert table[6][1] == pytest.approx([9 / 4, -5 / 4, 0.0])
    assert table[5] == [[0.0] * 3, [0.0] * 3] and table[0] == [[0.0] * 3, [0.0] * 3]


def test_step_graphs_need_a_valid_mode(fake_step_graphs):
    den = _dit()
    with pytest.raises(ValueError, match="cuda_graphs must be False, True"):
        with frdiff.apply(den, _policy(den), check_model=False, cuda_graphs="yes"):
            pass
    with pytest.raises(ValueError, match="needs compile='regional'"):
        with frdiff.apply(den, _policy(den), check_model=False, cuda_graphs="blocks"):
            pass


def test_step_graphs_need_a_cuda_device():
    den = _dit()
    with pytest.raises(ValueError, match="needs the denoiser on a CUDA device"):
        with frdiff.apply(den, _policy(den), check_model=False, cuda_graphs="step"):
            pass


@pytest.mark.parametrize("mode", [dict(compile="full", backend="eager"), dict(cuda_graphs="step")])
def test_static_modes_refuse_a_batch_change_inside_a_run(mode, fake_step_graphs):
    """As the eager hooks do: a run that changes its batch between a keyframe and a reuse step gets one clear error
    (a static buffer of the old batch would otherwise be broadcast into silently)."""
    den = _dit()
    policy = _policy(den, "taylor1", "feature", mix=False)
    t = torch.tensor([500])
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False, **mode):
        den(torch.randn(2, 4, 8, 8), timestep=t.repeat(2), class_labels=torch.tensor([1, 2]))
        with pytest.raises(frdiff.PolicyError, match="batch changed from 2 at the run's first step to 1 at step 1"):
            den(torch.randn(1, 4, 8, 8), timestep=t, class_labels=torch.tensor([1]))
    assert attached_hooks(den) == [] and all("forward" not in m.__dict__ for m in den.modules())


def test_full_graphs_pass_the_model_s_own_error_on():
    """An exception the model raises inside the traced call (a bad argument at a later step) reaches the caller as
    the model's own, not as dynamo's "Observed exception" with advice to change the compile mode."""
    from torch import nn

    class Scaled(nn.Module):  # generic blocks; refuses a bad scale
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])

        def forward(self, x, timestep, scale=1.0):
            if not 0 < scale <= 10:
                raise ValueError(f"scale must be in (0, 10], got {scale}")
            h = x * scale + timestep.reshape(-1, 1)
            for block in self.blocks:
                h = block(h)
            return h

    den = Scaled().eval()
    x, policy = torch.randn(2, 8), frdiff.make_preset("uniform", Scaled(), 4, interval=2)
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False, compile="full", backend="eager"):
        den(x, timestep=torch.full((2,), 900.0))
        with pytest.raises(ValueError, match=r"scale must be in \(0, 10\], got 20.0"):
            den(x, timestep=torch.full((2,), 800.0), scale=20.0)
    assert attached_hooks(den) == [] and all("forward" not in m.__dict__ for m in den.modules())


def test_full_graphs_name_a_graph_break_in_one_message():
    """A denoiser dynamo cannot trace as one graph (here: a graph break in its patch embedding, outside any block)
    gets one message naming the mode, the model and what to use instead; hooks are removed."""
    den = _dit()
    embed = den.pos_embed.forward

    def breaking(x):
        torch._dynamo.graph_break()
        return embed(x)

    den.pos_embed.forward = breaking
    try:
        with pytest.raises(RuntimeError, match=r"compile='full' runs the whole DiTTransformer2DModel call as one "
                                               r"graph, but dynamo cannot trace it as one \(Call to `torch._dynamo"
                                               r".graph_break\(\)`\); use compile='regional'"):
            _runs(den, _policy(den), rounds=1, compile="full", backend="eager")
    finally:
        del den.pos_embed.forward
    assert attached_hooks(den) == [] and all("forward" not in m.__dict__ for m in den.modules())


def test_inductor_options_reach_the_compiled_graphs():
    """compile_options go to inductor: with ``cpp_wrapper`` every graph of a ``full`` run launches its kernels from
    C++ (the generated code is a C++ wrapper), the output is the eager hooks' within float32 rounding, a later apply
    compiles nothing, and the same policy without the options gets graphs of its own (kept apart, not reused)."""
    from torch._inductor.utils import run_and_get_code

    den = _dit()
    policy = _policy(den, mix=False)
    (ref,), _ = _runs(den, policy, rounds=1)
    ((got,), report), codes = run_and_get_code(
        lambda: _runs(den, policy, rounds=1, compile="full", compile_options={"cpp_wrapper": True}))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert report.graphs_per_run == [2] and len(codes) == 2
    assert all("CppWrapperCodeCache" in code for code in codes)
    _, again = _runs(den, policy, rounds=1, compile="full", compile_options={"cpp_wrapper": True})
    assert again.graphs_per_run == [0]
    ((plain,), report), codes = run_and_get_code(lambda: _runs(den, policy, rounds=1, compile="full"))
    assert report.graphs_per_run == [2] and not any("CppWrapperCodeCache" in code for code in codes)
    torch.testing.assert_close(plain, ref, rtol=1e-4, atol=1e-4)


def test_bad_compile_options_get_one_message():
    den = _dit()
    policy = _policy(den)
    for kw, message in [({"compile": "full", "compile_options": {"cpp_wraper": True}}, "inductor has no option "
                         "'cpp_wraper'"),
                        ({"compile_options": {"cpp_wrapper": True}}, "need compile='regional' or 'full'"),
                        ({"compile": "full", "backend": "eager", "compile_options": {"cpp_wrapper": True}},
                         "backend 'eager' takes none"),
                        ({"compile": "full", "compile_options": {"cpp_wrapper": "yes"}},
                         "inductor refuses these options: .*cpp_wrapper.* should be bool"),
                        ({"compile": "regional", "compile_options": {"triton.cudagraphs": True}},
                         "'triton.cudagraphs': CUDA graphs are chosen with cuda_graphs="),
                        ({"compile": "full", "compile_options": {"triton.cudagraph_trees": False}},
                         "'triton.cudagraph_trees': CUDA graphs are chosen with cuda_graphs=")]:
        with pytest.raises(ValueError, match=message):
            with frdiff.apply(den, policy, check_model=False, **kw):
                pass
        assert attached_hooks(den) == []


def test_inductor_options_on_the_command_line(capsys):
    """``--inductor-option KEY=VALUE`` (run, bench gpu-speed): values typed, refused with one message without a
    compile mode or for a name inductor does not know, and spelled out again in a benchmark's recorded command."""
    import argparse

    from workbench.cli import main
    from workbench.cli.bench import bench_command
    from workbench.cli.common import inductor_option

    assert inductor_option("cpp_wrapper=true") == ("cpp_wrapper", True)
    assert inductor_option(" max_autotune = False ") == ("max_autotune", False)
    assert inductor_option("some_limit=3") == ("some_limit", 3)
    assert inductor_option("max_autotune_gemm_backends=ATEN,TRITON") == ("max_autotune_gemm_backends", "ATEN,TRITON")
    from frdiff.compiling import check_compile_options

    # as written on a command line: 0/1 for a flag, an integer for a float setting
    assert check_compile_options("full", "inductor", {"cpp_wrapper": 1}) == {"cpp_wrapper": True}
    for bad in ("cpp_wrapper", "=1", "cpp_wrapper="):
        with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
            inductor_option(bad)
    run = ["run", "--model", "tiny-dit", "--preset", "uniform", "--steps", "4", "--seeds", "0"]
    no_mode = "use it with --compile regional or full"
    for argv, message in [
            (run + ["--inductor-option", "cpp_wrapper=true"], no_mode),
            (run + ["--compile", "full", "--inductor-option", "cpp_wraper=true"], "no option 'cpp_wraper'"),
            (run + ["--compile", "regional", "--inductor-option", "cpp_wrapper=yes"], "should be bool"),
            (["bench", "gpu-speed", "--inductor-option", "cpp_wrapper=true"], no_mode)]:
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --inductor-option") and message in err and len(err.splitlines()) == 1
    args = argparse.Namespace(models="dit-xl-2", images="1", repeats=3, small=False, compile="full", cuda_graphs="step",
                              channels_last=False, profile=False, no_peers=True, no_forecasts=False,
                              peers_compiled=False, inductor_option=[("cpp_wrapper", True), ("some_limit", 3)])
    assert bench_command(args, "gpu-speed").endswith(
        "--cuda-graphs step --no-peers --inductor-option cpp_wrapper=true --inductor-option some_limit=3")


@pytest.mark.parametrize("compile", ["regional", "full"])
def test_a_50_step_run_compiles_what_6_steps_do_and_then_nothing(compile):
    """No recompilation from step to step across a 50-step run, the timestep and the forecast weights changing at
    every step (taylor2, score mixing, M=3): the first run compiles what a 6-step run of the same structure compiles
    (its configurations, not its steps), the second run nothing."""
    den = _dit()

    def run(steps, rounds):
        policy = frdiff.make_preset("uniform", den, steps, interval=3, reuse="taylor2", mix=True)
        timesteps = [torch.tensor([999 - (999 // steps) * s] * 2) for s in range(steps)]
        x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
        with torch.no_grad(), frdiff.apply(den, policy, check_model=False, compile=compile, backend="eager") as r:
            for _ in range(rounds):
                for s in range(steps):
                    den(x, timestep=timesteps[s], class_labels=y)
        return r.report()

    torch._dynamo.reset()
    short = run(6, 1).graphs_per_run
    torch._dynamo.reset()
    frdiff.release_step_graphs(den)
    den.__dict__.pop("_frdiff_full_runners", None)  # compiled runners kept on the model: start afresh
    long = run(50, 2)
    assert long.graphs_per_run == [short[0], 0] and short[0] > 0
    assert long.step_kinds.count("skip") > 0 and long.block_reuses > 0
