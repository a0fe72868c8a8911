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
    torch.manual_seed(1)
    dev = next(den.parameters()).device
    t = [torch.tensor([900 - 150 * s] * 2, device=dev) for s in range(STEPS)]
    if isinstance(den, DiTTransformer2DModel):
        x, y = torch.randn(2, 4, 8, 8).to(dev), torch.tensor([1, 2], device=dev)
        return lambda s: den(x, timestep=t[s], class_labels=y).sample
    x = torch.randn(2, 3, 8, 8).to(dev)
    return lambda s: den(x, t[s]).sample


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
    with pytest.raises(ValueError, match="compile must be one of off, regional"):
        with frdiff.apply(den, policy, check_model=False, compile="full"):
            pass
    with pytest.raises(ValueError, match="cuda_graphs='blocks' needs compile='regional'"):
        with frdiff.apply(den, policy, check_model=False, cuda_graphs=True):
            pass
    block = dict(den.named_modules())[policy.blocks[0]]
    block.forward = block.forward  # another tool's hook: an instance forward
    try:
        with pytest.raises(RuntimeError, match="already has a hook on its forward"):
            with frdiff.apply(den, policy, check_model=False, compile="regional", backend="eager"):
                pass
    finally:
        del block.forward
    assert attached_hooks(den) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (CI has none; "
                    "bench gpu-speed measures them on the GPU)")
def test_cuda_graphs_replay_the_compiled_policy():
    den = _dit().cuda()
    policy = _policy(den, "taylor2", "feature")
    call = _call(den)
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False):
        ref = torch.stack([call(s).clone() for s in range(STEPS)])
    with torch.no_grad(), frdiff.apply(den, policy, check_model=False, compile="regional", cuda_graphs=True) as run:
        for _ in range(3):
            got = torch.stack([call(s).clone() for s in range(STEPS)])
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert run.report().graphs_per_run[-1] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (CI has none; "
                    "bench gpu-speed measures them on the GPU)")
@pytest.mark.parametrize("make", [_dit, _unet])
@pytest.mark.parametrize("compile", ["off", "regional"])
def test_step_graphs_on_cuda_replay_the_eager_run(make, compile):
    """Real whole-step CUDA graphs: replays equal the same mode's run without graphs bit for bit (the same kernels),
    no capture after the first apply."""
    den = make().cuda()
    policy = _policy(den, "hold", "feature", mix=True)
    (ref,), _ = _runs(den, policy, rounds=1, compile=compile)  # the same kernels, launched one by one
    outs, reports = _rounds_in_separate_applies(den, policy, compile=compile, cuda_graphs="step")
    for got in outs:
        assert torch.equal(got, ref)
    assert [r.captures_per_run for r in reports] == [[2], [0], [0]]
    frdiff.release_step_graphs(den)


def test_compare_in_compile_mode_warms_up_then_times_without_recompiling(dit_pipe):
    from workbench.compare import Variant, compare

    policy = frdiff.make_preset("uniform", dit_pipe.denoiser, 4, interval=2)
    eager = compare(dit_pipe, [Variant("fr", policy)], [0, 1], [0, 1], steps=4)
    res = compare(dit_pipe, [Variant("fr", policy)], [0, 1], [0, 1], steps=4, repeats=2, compile="regional",
                  backend="eager")
    v = res["variants"][0]
    assert res["recompiles"] == 0 and v["warmup_s"] > 0 and res["reference"]["warmup_s"] > 0
    assert v["psnr"] == eager["variants"][0]["psnr"] and v["block_reuses"] == eager["variants"][0]["block_reuses"]


def test_cli_refuses_cuda_graphs_without_compile(capsys):
    from workbench.cli import main

    assert main(["run", "--model", "tiny-dit", "--preset", "uniform", "--steps", "4", "--seeds", "0",
                 "--cuda-graphs"]) != 0
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
    (graphs,) = den.__dict__["_frdiff_step_graphs"].values()
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


@pytest.mark.parametrize("make", [_dit, _unet])
@pytest.mark.parametrize("compile", ["off", "regional"])
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
    frdiff.release_step_graphs(den)
    assert "_frdiff_step_graphs" not in den.__dict__ and attached_hooks(den) == []


def test_step_graphs_capture_afresh_when_the_batch_changes(fake_step_graphs):
    """The same policy at another batch size: its graphs and cache buffers are made again (a buffer of the old
    batch would be broadcast into silently), and the output equals the eager run at that size."""
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
        for one in (False, True, False):
            with frdiff.apply(den, policy, check_model=False, cuda_graphs="step") as run:
                got.append(torch.stack([den(x1, timestep=t1[s], class_labels=y1).sample if one else call(s)
                                        for s in range(STEPS)]))
            reports.append(run.report().captures_per_run)
    assert torch.equal(got[0], ref) and torch.equal(got[1], ref1) and torch.equal(got[2], ref)
    assert reports == [[2], [2], [2]]  # each change of batch captures again
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


def test_step_graphs_refuse_forecasts_and_need_cuda(fake_step_graphs):
    den = _dit()
    with pytest.raises(ValueError, match="captures hold reuse only"):
        with frdiff.apply(den, _policy(den, "taylor1"), check_model=False, cuda_graphs="step"):
            pass
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
