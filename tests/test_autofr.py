"""Auto-FR: straight-through gates, the differentiable cost model, gated hooks = policy runs, checkpointing, the
optimisation, the exported policy reproducing its validation metrics through the engine, cancel, and the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

import frdiff
from frdiff import Policy, make_preset
from frdiff.autofr import (
    AutoFRConfig,
    compute_fraction,
    evaluate_policy,
    gate_matrix,
    gated_reuse,
    learn_policy,
    project_to_budget,
    sample,
    straight_through_gate,
    uniform_start,
)
from workbench.autofr import learn_for_pipeline, shapes_samples, shapes_task
from workbench.cli import main
from workbench.metrics import compare_images
from workbench.sampling import sample as sample_images


def _scheduler(pipe):
    return type(pipe.scheduler).from_config(pipe.scheduler.config)


# ---- gates and cost ------------------------------------------------------------------------------------------------
def test_straight_through_gate_is_binary_forward_and_sigmoid_backward():
    logits = torch.tensor([-3.0, -0.2, 0.0, 0.1, 2.5], requires_grad=True)
    gates = straight_through_gate(logits)
    assert gates.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]  # exactly 0/1, not 0.99…
    (gates * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    s = torch.sigmoid(logits.detach())
    torch.testing.assert_close(logits.grad, torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]) * s * (1 - s))
    assert bool((logits.grad != 0).all())


def test_gate_matrix_keeps_step_zero_and_compute_fraction_matches_the_engine_cost_model(unet_pipe):
    logits = torch.tensor([[-1.0, 1.0, -1.0], [1.0, -1.0, -1.0]])
    gates = gate_matrix(logits, 2)
    assert gates.tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]]
    shares = torch.tensor([0.2, 0.3])
    # reused: block 0 at 2 steps (0.2 each), block 1 at 2 steps (0.3 each) → 1 − (0.4 + 0.6)/4
    assert float(compute_fraction(gates, shares)) == pytest.approx(0.75)
    step_gates = gate_matrix(torch.tensor([-1.0, 1.0, -1.0]), 2)  # per step: the same row for every block
    assert step_gates.tolist() == [[1, 0, 1, 0]] * 2
    # against frdiff.step_costs on a real policy: the same number
    den = unet_pipe.denoiser
    policy = make_preset("uniform", den, 6, interval=3)
    savings = {"feature": {b: 0.003 * (i + 1) for i, b in enumerate(policy.blocks)}, "block": {}}  # Σ 0.513
    shares = torch.tensor([savings["feature"][b] for b in policy.blocks])
    expected = sum(frdiff.step_costs(policy, savings)) / 6
    assert float(compute_fraction(policy.keyframes.float(), shares)) == pytest.approx(expected, abs=1e-6)


def test_uniform_start_is_the_fewest_keyframes_meeting_the_target():
    # 10 steps, reuse saves 0.6: k ≤ 10·(1 − 0.4/0.6) = 3.33 → 3 keyframes at 0, 3, 6; cost 1 − 0.7·0.6 = 0.58
    assert uniform_start(10, 0.6, 0.6).nonzero().flatten().tolist() == [0, 3, 6]
    assert uniform_start(10, 0.6, None).all()
    assert uniform_start(10, 0.3, 0.5).nonzero().flatten().tolist() == [0]  # unreachable: reuse everywhere


def test_budget_projection_takes_gates_by_logit_while_they_fit():
    shares = torch.tensor([0.3, 0.1])  # 4 steps: a per-step gate costs 0.4/4 = 0.1; per block 0.075 or 0.025
    # per step: all reusing costs 1 − 0.4·3/4 = 0.7; target 0.85 fits one step (→ 0.8), not two (0.9)
    mask = project_to_budget(torch.tensor([0.5, 2.0, -1.0]), shares, 0.85)
    assert mask.tolist() == [[True, False, True, False]] * 2
    # per block, by logit: (0,3) +0.075 → 0.775, (1,1) +0.025 → 0.8, (0,1) → 0.875 > 0.85 skipped,
    # (1,2) → 0.825, (0,2) → 0.9 skipped, (1,3) → 0.85: a negative logit is taken while the budget allows
    logits = torch.tensor([[1.0, -2.0, 3.0], [2.0, 0.1, -3.0]])
    mask = project_to_budget(logits, shares, 0.85)
    assert mask.tolist() == [[True, False, False, True], [True, True, True, True]]
    assert float(compute_fraction(mask.float(), shares)) == pytest.approx(0.85)


# ---- gated hooks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture,gran,reuse", [("unet_pipe", "feature", "hold"), ("dit_pipe", "feature", "hold"),
                                                ("dit_pipe", "block", "hold"), ("unet_pipe", "feature", "taylor2"),
                                                ("dit_pipe", "block", "taylor1")])
def test_hard_gates_reproduce_the_policy_run(fixture, gran, reuse, request):
    """The training forward with hard gates is the engine's run of the same mask and reuse mode (up to float
    rounding: the gated resnet path computes heavy and light parts separately)."""
    pipe = request.getfixturevalue(fixture)
    den = pipe.denoiser
    steps = 6
    policy = make_preset("uniform", den, steps, interval=2, reuse=reuse)
    policy.granularity = [gran] * len(policy.blocks)
    policy.keyframes[1::2, 3] = True  # make it per block: odd blocks also computed at step 3
    task, samples = shapes_task(pipe), shapes_samples(pipe, [4])
    with torch.no_grad():
        with frdiff.apply(den, policy, check_model=False):
            engine = sample(task, _scheduler(pipe), samples.noise, samples.cond, steps)
        with gated_reuse(den, policy.blocks, policy.granularity, frdiff.policy.ORDERS[reuse]) as state:
            state.gates = policy.keyframes.float()
            state.hard = policy.keyframes.tolist()
            gated = sample(task, _scheduler(pipe), samples.noise, samples.cond, steps, state)
        full = sample(task, _scheduler(pipe), samples.noise, samples.cond, steps)
    torch.testing.assert_close(gated, engine, atol=2e-5, rtol=1e-4)
    assert (engine - full).abs().max() > 1e-3  # the mask matters: reuse changed the sample
    assert frdiff.attached_hooks(den) == []


def test_checkpointing_gives_the_same_gradients(unet_pipe):
    den = unet_pipe.denoiser
    blocks = [b for b, _ in frdiff.find_blocks(den)]
    task, samples = shapes_task(unet_pipe), shapes_samples(unet_pipe, [0])
    grads = []
    den.requires_grad_(False)
    for use_checkpoint in (False, True):
        logits = torch.tensor([0.3, -0.3, 0.3], requires_grad=True)
        with gated_reuse(den, blocks, ["feature"] * len(blocks)) as state:
            state.gates = gate_matrix(logits, len(blocks))
            x = sample(task, _scheduler(unet_pipe), samples.noise, samples.cond, 4, state, use_checkpoint)
            x.pow(2).mean().backward()
        grads.append(logits.grad)
    assert bool((grads[0] != 0).all())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-7, rtol=1e-4)


# ---- optimisation --------------------------------------------------------------------------------------------------
def test_a_few_steps_lower_the_loss_at_the_target(dit_pipe):
    """Fixed batch (2 images, batch 2), 8 steps: the exported mask has a lower MSE on that batch than the uniform
    start at no more compute, the training loss went down, and μ follows the compute overshoot."""
    cfg = AutoFRConfig(target_compute=0.85, iterations=6, lr=0.3, init_logit=0.1, batch_size=2)
    seen = []
    res = learn_for_pipeline(dit_pipe, cfg, 8, [0, 1], progress=seen.append)
    curve = res.history
    assert len(curve) == 6 and len(seen) == 6
    assert seen[0]["mask"].shape == (6, 8) and seen[0]["target"] == 0.85
    assert torch.equal(seen[-1]["projected_mask"], res.policy.keyframes)  # the last report = what was exported
    assert seen[-1]["projected_compute_fraction"] == pytest.approx(res.policy.provenance["compute_fraction"])
    first = curve[0]
    assert first["compute_fraction"] <= 0.85 and first["loss"] == pytest.approx(math.log(first["mse"]) + first["mu"] * (
        first["compute_fraction"] - 0.85), rel=1e-5)
    assert min(r["loss"] for r in curve[1:]) < first["loss"]
    for prev, now in zip(curve, curve[1:], strict=False):  # dual ascent: μ follows this iteration's overshoot
        if now["compute_fraction"] > 0.85 + 1e-6:
            assert now["mu"] > prev["mu"]
        elif now["compute_fraction"] < 0.85 - 1e-6:
            assert now["mu"] < prev["mu"]
    policy = res.policy
    assert policy.provenance["compute_fraction"] <= 0.85 + 1e-6
    den, task, batch = dit_pipe.denoiser, shapes_task(dit_pipe), shapes_samples(dit_pipe, [0, 1])
    start = make_preset("uniform", den, 8)
    start.keyframes[:] = seen[0]["mask"]  # the uniform start the run began from
    learned = evaluate_policy(den, policy, task, dit_pipe.scheduler, batch)
    initial = evaluate_policy(den, start, task, dit_pipe.scheduler, batch)
    assert learned["mse"] < initial["mse"]
    assert initial["mse"] == pytest.approx(first["mse"], rel=1e-3)  # the engine run = the training forward


def test_budget_estimator_trains_on_the_projected_mask(dit_pipe):
    seen = []
    cfg = AutoFRConfig(target_compute=0.8, estimator="budget", iterations=3, batch_size=1, lr=0.2)
    res = learn_policy(dit_pipe.denoiser, shapes_task(dit_pipe), dit_pipe.scheduler, shapes_samples(dit_pipe, [0, 1]),
                       8, cfg, progress=seen.append)
    assert all(r["compute_fraction"] <= 0.8 + 1e-6 for r in res.history)
    # the mask an iteration runs is the projection the previous one reported
    assert all(torch.equal(a["projected_mask"], b["mask"]) for a, b in zip(seen, seen[1:], strict=False))
    assert torch.equal(res.policy.keyframes, seen[-1]["projected_mask"])
    assert "needs a target" in AutoFRConfig(target_compute=None, estimator="budget").problems()[0]


def test_policy_validates_and_reproduces_its_validation_metrics_through_the_engine(unet_pipe, tmp_path):
    cfg = AutoFRConfig(gates="block", target_compute=0.75, iterations=2, batch_size=1)
    res = learn_for_pipeline(unet_pipe, cfg, 6, [0, 1], [100, 101, 102], model_name="tiny-unet")
    path = res.policy.save(tmp_path / "p.json")
    policy = Policy.load(path)  # validates
    den = unet_pipe.denoiser
    assert policy.problems(model_blocks=dict(frdiff.find_blocks(den)), fingerprint=frdiff.model_fingerprint(den)) == []
    prov = policy.provenance
    assert prov["made_by"] == "autofr" and prov["settings"]["gates"] == "block" and len(prov["loss_curve"]) == 2
    assert prov["val_seeds"] == "100-102" and prov["train_seeds"] == "0-1"
    assert policy.keyframes[:, 0].all() and not policy.mixing.enabled
    assert prov["compute_fraction"] <= 0.75 + 1e-6
    labels = [s % unet_pipe.num_classes for s in (100, 101, 102)]
    ref = sample_images(unet_pipe, labels, [100, 101, 102], steps=6)
    with frdiff.apply(unet_pipe, policy) as run:
        out = sample_images(unet_pipe, labels, [100, 101, 102], steps=6)
    metrics = compare_images(ref.images, out.images)
    assert metrics["psnr"] == pytest.approx(prov["validation"]["psnr"], abs=0.02)
    assert metrics["psnr"] < 100  # some block reuses: not the reference itself
    assert run.report().denoiser_calls == 6
    savings = {"feature": {b: s for b, s in zip(policy.blocks, _shares(unet_pipe, policy), strict=True)}}
    assert prov["predicted_speedup"] == pytest.approx(frdiff.predicted_speedup(policy, savings), rel=1e-6)


def _shares(pipe, policy):
    from workbench.compare import measure_savings

    sav = measure_savings(pipe)
    return [sav["feature"][b] for b in policy.blocks]


def test_cancel_stops_and_exports_what_was_learned_so_far(dit_pipe):
    calls = []
    cfg = AutoFRConfig(target_compute=0.9, iterations=5, batch_size=1)
    task, train = shapes_task(dit_pipe), shapes_samples(dit_pipe, [0])
    res = learn_policy(dit_pipe.denoiser, task, dit_pipe.scheduler, train, 6, cfg, progress=calls.append,
                       cancel=lambda: len(calls) >= 1)
    prov = res.policy.provenance
    assert res.cancelled and len(res.history) == 1 and prov["cancelled"] is True and prov["iterations_run"] == 1
    assert prov["compute_fraction"] <= 0.9 + 1e-6 and res.policy.keyframes[:, 0].all()
    assert frdiff.attached_hooks(dit_pipe) == []


def test_a_non_finite_iteration_leaves_the_gates_as_they_were(dit_pipe, monkeypatch):
    """A forward that overflows (measured: whole-block taylor2 with per-block gates on tiny-unet ran to NaN and every
    later iteration stayed NaN) must not move the gates: the iteration is recorded as skipped and training goes on."""
    import frdiff.autofr as autofr

    calls, seen = [0], []
    real = autofr.sample

    def overflowing(denoise, scheduler, noise, cond, steps, state=None, checkpoint=False):
        x = real(denoise, scheduler, noise, cond, steps, state, checkpoint)
        if state is None:  # the references and the warm-up run stay finite
            return x
        calls[0] += 1
        return x * float("nan") if calls[0] == 2 else x  # the second training forward overflows

    monkeypatch.setattr(autofr, "sample", overflowing)
    cfg = AutoFRConfig(target_compute=0.7, iterations=4, batch_size=1)
    res = learn_policy(dit_pipe.denoiser, shapes_task(dit_pipe), dit_pipe.scheduler, shapes_samples(dit_pipe, [0]),
                       6, cfg, progress=lambda info: seen.append(info["projected_mask"].clone()))
    skipped = [h["skipped_nonfinite"] for h in res.history]
    assert skipped == [False, True, False, False] and math.isnan(res.history[1]["mse"])
    assert torch.equal(seen[0], seen[1])  # the skipped iteration changed nothing the run would export
    assert all(math.isfinite(h["mse"]) for i, h in enumerate(res.history) if i != 1)
    assert all(math.isfinite(h["mu"]) for h in res.history if h["mu"] is not None)
    assert res.policy.keyframes[:, 0].all()


def test_learn_policy_restores_the_models_flags(dit_pipe):
    den = dit_pipe.denoiser
    before = [p.requires_grad for p in den.parameters()]
    cfg = AutoFRConfig(target_compute=0.9, iterations=1, batch_size=1)
    learn_policy(den, shapes_task(dit_pipe), dit_pipe.scheduler, shapes_samples(dit_pipe, [0]), 4, cfg)
    assert [p.requires_grad for p in den.parameters()] == before and not den.training


def test_bad_settings_are_reported_together():
    cfg = AutoFRConfig(gates="layer", target_compute=1.5, batch_size=0)
    problems = cfg.problems()
    assert len(problems) == 3 and "gates must be one of step, block" in problems[0]


# ---- CLI -------------------------------------------------------------------------------------------------------------
def test_cli_reports_validation_psnr_and_speedups(capsys, tmp_path):
    out = tmp_path / "p.json"
    assert main(["autofr", "--model", "tiny-dit", "--steps", "6", "--gates", "step", "--target-compute",
                 "0.9", "--iterations", "2", "--batch-size", "1", "--train-seeds", "0-1", "--val-seeds", "100-102",
                 "--quiet", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("val_psnr", "predicted_speedup", "measured_speedup", "compute_fraction", "step_mask", "loss_curve"):
        assert key in report
    policy = Policy.load(out)
    assert report["val_psnr"] == policy.provenance["validation"]["psnr"]
    assert report["predicted_speedup"] == pytest.approx(1 / report["compute_fraction"])
    assert len(report["step_mask"]) == 6 and report["step_mask"][0] == "K"
    assert main(["autofr", "--model", "tiny-dit", "--steps", "6", "--train-seeds", "0-3", "--val-seeds", "3-5",
                 "--out", str(out)]) == 2
    assert "validation seeds must be held out" in capsys.readouterr().err


def test_front_verdicts_against_a_hand_computed_envelope():
    from workbench.bench.autofr import _envelope, verdict

    front = [{"name": "a", "compute_fraction": 0.5, "psnr": 20.0}, {"name": "b", "compute_fraction": 1.0, "psnr": 30.0},
             {"name": "c", "compute_fraction": 0.75, "psnr": 22.0}]  # c lies under the chord a–b (25 dB at 0.75)
    assert _envelope([(f["compute_fraction"], f["psnr"]) for f in front], 0.75) == pytest.approx(25.0)
    assert _envelope([(0.5, 20.0), (1.0, 30.0)], 0.4) is None  # cheaper than any front policy
    above = verdict({"compute_fraction": 0.75, "psnr": 26.0}, front)
    assert above["verdict"] == "above" and above["margin_db"] == pytest.approx(1.0)
    between = verdict({"compute_fraction": 0.75, "psnr": 23.0}, front)  # beats c, under the chord, a is worse
    assert between["verdict"] == "not dominated" and between["best_cheaper"]["name"] == "c"
    below = verdict({"compute_fraction": 0.8, "psnr": 21.0}, front)
    assert below["verdict"] == "below" and sorted(below["dominated_by"]) == ["c"]


def test_bench_autofr_measures_front_and_learned_policies_on_held_out_seeds(tmp_path):
    from workbench.bench.autofr import MARK_END, MARK_START, bench_autofr, write_markdown

    rep = bench_autofr(models=("tiny-dit",), steps=4, train_seeds=[0, 1], val_seeds=[100, 101], iterations=1,
                       runs=[("step", "block", None, "taylor2")], targets={"tiny-dit": 0.9}, device="cpu")
    rows = rep["models"]["tiny-dit"]["rows"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["reduced-nfe M=2"]["compute_fraction"] == pytest.approx(0.5)
    assert by_name["reduced-nfe M=2"]["denoiser_calls"] == 2
    (mine,) = [r for r in rows if r["autofr"]]
    assert mine["target"] == 0.9 and mine["compute_fraction"] <= 0.9 + 1e-6
    assert mine["verdict"] in ("above", "not dominated", "below")
    learned = Policy.from_dict(mine["policy"])
    assert learned.steps == 4 and set(learned.reuse) == {"taylor2"} and set(learned.granularity) == {"block"}
    with pytest.raises(ValueError, match="held out"):
        bench_autofr(models=("tiny-dit",), steps=4, train_seeds=[0, 1], val_seeds=[1, 2], iterations=1)
    js, md = tmp_path / "a.json", tmp_path / "a.md"
    js.write_text(json.dumps(rep))
    md.write_text(f"intro\n{MARK_START}\nold\n{MARK_END}\noutro\n")
    write_markdown(js, md)
    text = md.read_text()
    assert "old" not in text and text.startswith("intro") and text.endswith("outro\n")
    assert f"| {mine['compute_fraction']:.3f} | {mine['psnr']:.2f} |" in text


def test_bench_autofr_tables_name_each_models_machine_when_they_differ(tmp_path):
    from workbench.bench.autofr import MARK_END, MARK_START, write_markdown

    bench = Path(__file__).resolve().parents[1] / "docs" / "bench"
    md = tmp_path / "autofr.md"
    md.write_text(f"head\n{MARK_START}\nold\n{MARK_END}\ntail\n")
    report = write_markdown([bench / "autofr-tiny-unet-h200.json", bench / "autofr-tiny-dit-cpu.json"], md)
    text = md.read_text()
    assert set(report["models"]) == {"tiny-unet", "tiny-dit"} and "old" not in text
    assert "on the machine named under each model" in text
    unet, dit = text.index("### tiny-unet"), text.index("### tiny-dit")
    assert "Measured on NVIDIA H200" in text[unet:dit] and "Measured on the CPU (x86_64, 1 thread" in text[dit:]
    assert text.startswith("head\n") and text.endswith("tail\n")
