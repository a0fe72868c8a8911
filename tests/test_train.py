"""Training (workbench/models/train.py and ``python -m workbench train``): the learning-rate schedules, Min-SNR-γ loss
weights, the config's validation, reproducible runs, and data-parallel training under torchrun (2 gloo processes on
the CPU, launched as in test_distributed.py; the training job runs ``workbench.cli.main`` through a 15-line script
that also notes each rank's data seeds, the refused one through ``-m workbench`` itself).

The runs are tiny (tiny-dit, 4 steps of 2 images, no sample grids): they check what a run writes and which
arguments change it, not what it learns. With the default EMA decay (0.999) 4 steps still move about an eighth of
the saved fp16 weights, so "different weights" is a real comparison; "identical" is asserted bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from workbench.cli import main
from workbench.models.train import TrainConfig, _fingerprint, _lr_at, loss_weights

ROOT = Path(__file__).resolve().parents[1]
TINY = ("train", "--model", "tiny-dit", "--steps", "4", "--batch-size", "2", "--warmup", "2", "--sample-every", "0",
        "--json")
WEIGHTS = Path("tiny-dit") / "transformer" / "diffusion_pytorch_model.safetensors"


def torchrun(*args: str, cwd: Path, script: str | None = None) -> subprocess.CompletedProcess:
    """2 gloo ranks of ``python -m workbench *args`` (or of ``script``, a file in ``cwd``, in its place)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "FRDIFF_DIST_TIMEOUT_S": "120"}
    entry = [script] if script else ["-m", "workbench"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *entry, *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def train(capsys, out: Path, *extra: str) -> dict:
    """``train`` with the tiny arguments in this process, on one thread like each torchrun rank; its JSON report."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        assert main([*TINY, *extra, "--out", str(out)]) == 0
        return json.loads(capsys.readouterr().out)
    finally:
        torch.set_num_threads(threads)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / WEIGHTS))


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> int:
    """How many of the saved values differ between two runs."""
    assert a.keys() == b.keys()
    return sum(int((a[k] != b[k]).sum()) for k in a)


def test_constant_lr_warms_up_linearly_then_stays_flat():
    cfg = TrainConfig(model="tiny-dit", lr=1e-3, warmup=4, steps=20)
    assert [_lr_at(s, cfg) for s in range(7)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3, 1e-3])
    assert _lr_at(19, cfg) == pytest.approx(1e-3) and _lr_at(10_000, cfg) == pytest.approx(1e-3)
    assert _lr_at(19, cfg, total_steps=5) == pytest.approx(1e-3)  # the total only shapes the cosine
    assert _lr_at(0, TrainConfig(model="tiny-dit", lr=1e-3, warmup=0)) == pytest.approx(1e-3)  # no warm-up


def test_cosine_lr_warms_up_then_falls_to_zero_at_the_last_step():
    lr, warmup, steps = 1e-3, 4, 24  # 20 steps of cosine after the warm-up: its midpoint is step 14
    cfg = TrainConfig(model="tiny-dit", lr=lr, warmup=warmup, steps=steps, lr_schedule="cosine")
    flat = TrainConfig(model="tiny-dit", lr=lr, warmup=warmup, steps=steps)
    assert [_lr_at(s, cfg) for s in range(warmup)] == pytest.approx([_lr_at(s, flat) for s in range(warmup)])
    assert [_lr_at(s, cfg) for s in range(warmup)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert _lr_at(warmup, cfg) == pytest.approx(lr)  # the peak right after warm-up
    assert _lr_at(14, cfg) == pytest.approx(lr / 2)
    assert _lr_at(9, cfg) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 5 / 20)))
    last = _lr_at(steps - 1, cfg)
    assert last == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 19 / 20))) and 0 < last < 0.01 * lr
    assert _lr_at(steps, cfg) == pytest.approx(0, abs=1e-15) and _lr_at(10 * steps, cfg) == pytest.approx(0, abs=1e-15)
    after = [_lr_at(s, cfg) for s in range(warmup, steps)]
    assert all(a > b for a, b in zip(after, after[1:], strict=False))  # strictly falling after the warm-up
    # total_steps (the count fitted to a time limit) overrides cfg.steps
    assert [_lr_at(s, cfg, total_steps=steps) for s in range(steps + 2)] == [_lr_at(s, cfg) for s in range(steps + 2)]
    assert _lr_at(14, cfg, total_steps=44) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi / 4)))
    assert _lr_at(24, cfg, total_steps=44) == pytest.approx(lr / 2)
    assert _lr_at(43, cfg, total_steps=44) < 0.01 * lr < _lr_at(23, cfg, total_steps=44)


def _alphas_cumprod_by_hand() -> torch.Tensor:
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def test_linear_beta_schedule_is_the_one_training_uses(random_dit_pipe):
    alphas = DDPMScheduler.from_config(random_dit_pipe.scheduler.config).alphas_cumprod  # as train_diffusion builds it
    assert alphas.shape == (1000,)
    torch.testing.assert_close(alphas.double(), _alphas_cumprod_by_hand(), rtol=1e-5, atol=1e-7)


def test_no_loss_weighting_gives_ones():
    alphas = _alphas_cumprod_by_hand().float()
    w = loss_weights(alphas, TrainConfig(model="tiny-dit"))
    assert w.dtype == alphas.dtype and torch.equal(w, torch.ones(1000))


@pytest.mark.parametrize("gamma", [5.0, 1.0])
def test_min_snr_weights_are_min_of_snr_and_gamma_over_snr(gamma):
    cfg = TrainConfig(model="tiny-dit", loss_weighting="min-snr", min_snr_gamma=gamma)
    alphas = _alphas_cumprod_by_hand().float()  # training's ᾱ are float32
    w = loss_weights(alphas, cfg)
    assert w.dtype == torch.float32
    snr = alphas.double() / (1 - alphas.double())  # in float64 from the same ᾱ (float32's 1 - ᾱ is exact here)
    expected = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64)) / snr
    torch.testing.assert_close(w.double(), expected, rtol=1e-6, atol=0)
    exact = _alphas_cumprod_by_hand()  # and from float64 ᾱ in float64, against the formula written out
    torch.testing.assert_close(loss_weights(exact, cfg), torch.where(exact / (1 - exact) > gamma,
                                                                     gamma * (1 - exact) / exact, 1.0),
                               rtol=1e-12, atol=0)
    clear = (snr - gamma).abs() > 1e-3 * gamma  # leave out the step (if any) that float32 could put on either side
    noisy, clean = (snr <= gamma) & clear, (snr > gamma) & clear
    assert noisy.sum() > 500 and clean.sum() > 20  # both regimes occur among the 1000 steps
    assert torch.equal(w[noisy], torch.ones(int(noisy.sum())))  # high noise: weight exactly 1
    assert bool((w[clean] < 1).all())
    assert w[0].item() == pytest.approx(gamma * 1e-4 / (1 - 1e-4), rel=1e-3)  # SNR(0) = (1-β₀)/β₀ ≈ 9999
    assert bool((w[1:] >= w[:-1]).all())  # weights never fall as the noise rises


@pytest.mark.parametrize("kwargs, field", [
    (dict(lr_schedule="linear"), "lr_schedule"),
    (dict(loss_weighting="p2"), "loss_weighting"),
    (dict(min_snr_gamma=0.0), "min_snr_gamma"),
    (dict(min_snr_gamma=-1.0), "min_snr_gamma"),
    (dict(min_snr_gamma=float("nan")), "min_snr_gamma"),
    (dict(lr=0.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(distill_weight=0.5), "teacher"),
    (dict(distill_weight=1.5, teacher="tiny-unet"), "distill_weight"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(ema_decay=1.5), "ema_decay"),
    (dict(ema_decay=-0.1), "ema_decay"),
    (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"),
])
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(model="tiny-dit", **kwargs)


def test_config_accepts_its_boundaries():
    cfg = TrainConfig(model="tiny-dit", ema_decay=0.0, min_snr_gamma=1e-6, lr_schedule="cosine",
                      loss_weighting="min-snr", steps=1, batch_size=1)
    assert (cfg.ema_decay, cfg.lr_schedule, cfg.loss_weighting) == (0.0, "cosine", "min-snr")


@pytest.mark.parametrize("flag, value, field", [("--ema-decay", "1.5", "ema_decay"),
                                                ("--min-snr-gamma", "0", "min_snr_gamma")])
def test_cli_reports_a_bad_value_in_one_line_and_writes_nothing(tmp_path, capsys, flag, value, field):
    out = tmp_path / "out"
    capsys.readouterr()
    assert main([*TINY, flag, value, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert field in lines[0] and value in lines[0]
    assert "Traceback" not in captured.err
    assert not out.exists()


def test_cli_refuses_an_unknown_schedule(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's choices
        main([*TINY, "--lr-schedule", "linear", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "--lr-schedule" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_is_reproducible_from_its_arguments(tmp_path, capsys):
    first = train(capsys, tmp_path / "a")
    again = train(capsys, tmp_path / "b")
    other_seed = train(capsys, tmp_path / "c", "--seed", "1")
    a, b, c = weights(tmp_path / "a"), weights(tmp_path / "b"), weights(tmp_path / "c")
    assert len(a) > 50 and all(v.dtype == torch.float16 for v in a.values())  # the EMA, saved in fp16
    assert identical(a, b)
    assert changed(a, c) > sum(v.numel() for v in a.values()) // 2  # another initialisation and noise
    for report in (first, again):
        assert report["steps_done"] == report["schedule_steps"] == 4 and report["world_size"] == 1
        assert report["skipped_nonfinite_steps"] == 0 and math.isfinite(report["final_loss"])
        assert report["config"]["lr_schedule"] == "constant" and report["config"]["loss_weighting"] == "none"
        assert report["config"]["seed"] == 0 and report["config"]["batch_size"] == 2
        assert report["device"] == "cpu" and "replicas_identical" not in report
    assert first["final_loss"] == again["final_loss"]
    assert other_seed["config"]["seed"] == 1
    record = json.loads((tmp_path / "a" / "tiny-dit" / "training.json").read_text())
    assert record == first  # the printed report is what training.json keeps
    assert not list((tmp_path / "a").rglob("*.png"))  # --sample-every 0: not even the final grid
    from workbench.models import meta

    card, reasons = meta.read(tmp_path / "a" / "tiny-dit")  # written at training time, for `policy make`
    assert reasons == [] and card["model"] == meta.load("tiny-dit")["model"]
    assert card["blocks"] == [[f"transformer_blocks.{i}", "dit_block"] for i in range(6)]


def test_cosine_schedule_is_recorded_and_changes_the_run(tmp_path, capsys):
    train(capsys, tmp_path / "constant", "--steps", "8")
    report = train(capsys, tmp_path / "cosine", "--steps", "8", "--lr-schedule", "cosine")
    assert report["config"]["lr_schedule"] == "cosine"
    assert report["steps_done"] == report["schedule_steps"] == 8
    assert changed(weights(tmp_path / "constant"), weights(tmp_path / "cosine")) > 0


def test_min_snr_weighting_changes_training(tmp_path, capsys):
    # Weights scale a step's loss; AdamW after clipping at norm 1 ignores a common scale, so a run only changes on a
    # step whose two samples get different weights. With γ = 5 the weight is below 1 for t < 130 only (13 % of the
    # steps): 8 steps (16 draws of t) make such a step likely; γ = 0.1 (below 1 for t < 485) makes it certain.
    train(capsys, tmp_path / "none", "--steps", "8")
    report = train(capsys, tmp_path / "min-snr", "--steps", "8", "--loss-weighting", "min-snr")
    train(capsys, tmp_path / "gamma-0.1", "--steps", "8", "--loss-weighting", "min-snr", "--min-snr-gamma", "0.1")
    # γ above every SNR of the schedule: every weight is exactly 1, so the run must equal the unweighted one; this
    # pins the differences on the weights, not on anything else the option might switch
    train(capsys, tmp_path / "huge-gamma", "--steps", "8", "--loss-weighting", "min-snr", "--min-snr-gamma", "1e9")
    none = weights(tmp_path / "none")
    assert report["config"]["loss_weighting"] == "min-snr" and report["config"]["min_snr_gamma"] == 5.0
    assert changed(none, weights(tmp_path / "min-snr")) > 1000
    assert changed(none, weights(tmp_path / "gamma-0.1")) > 1000
    assert identical(none, weights(tmp_path / "huge-gamma"))


def test_fingerprint_tells_weights_apart():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(5, 7, generator=g), torch.randn(11, generator=g)]
    fp = _fingerprint(ws)
    assert fp.dtype == torch.float64 and fp.shape == (2,)
    assert torch.equal(fp, _fingerprint([w.clone() for w in ws]))
    assert fp[0].item() == pytest.approx(sum(float(w.double().sum()) for w in ws))
    nudged = [ws[0].clone(), ws[1].clone()]
    nudged[1][3] += 1e-3
    assert not torch.equal(fp, _fingerprint(nudged))
    swapped = [ws[0].clone(), ws[1].clone()]
    swapped[1][[0, 1]] = swapped[1][[1, 0]]  # same sum, other order: only the weighted sum sees it
    fp_swapped = _fingerprint(swapped)
    assert fp_swapped[0].item() == pytest.approx(fp[0].item(), abs=1e-12) and fp_swapped[1] != fp[1]


RECORDING_TRAIN = """
import json, os, sys
import workbench.models.train
from workbench.cli import main

seeds = []
render = workbench.models.train.make_shapes


def recording(n, seed, **kwargs):
    seeds.append(int(seed))
    return render(n, seed, **kwargs)


workbench.models.train.make_shapes = recording
code = main(sys.argv[1:])
with open(f"seeds-{os.environ.get('RANK', 'single')}.json", "w") as f:
    json.dump(seeds, f)
sys.exit(code)
"""


def test_torchrun_trains_data_parallel(tmp_path, capsys):
    # `python -m workbench` that also notes each rank's data seeds (one torchrun job checks both)
    (tmp_path / "recording_train.py").write_text(RECORDING_TRAIN)
    proc = torchrun(*TINY, "--data-seed", "3", "--out", "ddp", cwd=tmp_path, script="recording_train.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # exactly one JSON object: rank 0's
    assert report["world_size"] == 2 and report["replicas_identical"] is True
    assert report["steps_done"] == report["schedule_steps"] == 4 and report["skipped_nonfinite_steps"] == 0
    assert report["config"]["batch_size"] == 2  # per rank
    assert "error:" not in proc.stderr
    assert json.loads((tmp_path / "ddp" / "tiny-dit" / "training.json").read_text()) == report
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["tiny-dit"]  # rank 0 alone writes
    # step s: rank r renders the batch of data seed data_seed·10⁶ + 2s + r, so the ranks never share a batch
    rank0, rank1 = (json.loads((tmp_path / f"seeds-{r}.json").read_text()) for r in (0, 1))
    assert rank0 == [3_000_000 + 2 * s for s in range(4)] and rank1 == [3_000_000 + 2 * s + 1 for s in range(4)]
    one = train(capsys, tmp_path / "single", "--data-seed", "3")
    assert one["world_size"] == 1
    # the same arguments in one process: other batches, so other averaged gradients and weights
    assert changed(weights(tmp_path / "ddp"), weights(tmp_path / "single")) > 1000


def test_torchrun_refuses_the_shape_classifier(tmp_path):
    proc = torchrun("train", "--model", "shape-classifier", "--steps", "4", "--batch-size", "2", "--warmup", "2",
                    "--json", "--out", "cls", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    # every rank reaches the same check before any work; rank 0 alone says why (distributed.refuse)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert re.fullmatch(r"error: rank 0 of 2: the shape classifier trains in one process; run it without torchrun",
                        errors[0]), errors[0]
    assert not (tmp_path / "cls").exists()


def test_distillation_target_mixes_the_noise_and_the_teachers_prediction(tmp_path, capsys):
    # A student started from the teacher's own weights predicts exactly what the teacher predicts, so with
    # --distill-weight 1 the first step's loss is 0, and with 0.5 it is ‖p - (ε + p)/2‖² = ¼‖p - ε‖², a quarter of
    # the same step's loss without a teacher (same seeds: same images, noise levels and noise).
    train(capsys, tmp_path / "init")
    init = str(tmp_path / "init" / "tiny-dit")
    plain = train(capsys, tmp_path / "plain", "--steps", "1", "--init-from", init)
    taught = train(capsys, tmp_path / "taught", "--steps", "1", "--init-from", init, "--teacher", init,
                   "--distill-weight", "1")
    half = train(capsys, tmp_path / "half", "--steps", "1", "--init-from", init, "--teacher", init,
                 "--distill-weight", "0.5")
    assert plain["final_loss"] > 0.01
    assert taught["final_loss"] == 0.0
    assert half["final_loss"] == pytest.approx(0.25 * plain["final_loss"], rel=1e-5)
    assert taught["config"]["teacher"] == init and taught["config"]["distill_weight"] == 1.0


def test_a_teacher_of_another_architecture_trains_the_student(tmp_path, capsys):
    # the shipped UNet teaching a DiT: another denoiser class with its own class encoder, same classes and images
    plain = train(capsys, tmp_path / "plain")
    report = train(capsys, tmp_path / "out", "--teacher", "tiny-unet", "--distill-weight", "1")
    assert math.isfinite(report["final_loss"]) and report["config"]["teacher"] == "tiny-unet"
    assert report["final_loss"] != plain["final_loss"]
    assert changed(weights(tmp_path / "out"), weights(tmp_path / "plain")) > 1000


def test_a_missing_teacher_is_one_clear_error_and_writes_nothing(tmp_path, capsys):
    code = main([*TINY, "--teacher", str(tmp_path / "nope"), "--distill-weight", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "nope" in lines[0], err
    assert not (tmp_path / "out").exists()
