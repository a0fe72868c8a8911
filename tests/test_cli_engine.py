"""CLI of the engine: policy make / validate / remap / from-run, and run --json."""

import json

import pytest
import torch

from frdiff import Policy
from workbench.cli import main


def _json(capsys, *argv):
    assert main(list(argv) + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_policy_make_validate_remap(capsys, tmp_path):
    p = tmp_path / "p.json"
    made = _json(capsys, "policy", "make", "--model", "tiny-unet", "--steps", "10", "--preset", "uniform",
                 "--interval", "2", "--mix", "--out", str(p))
    assert made["steps"] == 10 and made["blocks"] == 18
    assert made["step_kinds"] == "K-K-KrKrKr"  # λ = 0 for r < 0.433 (no call), then FR
    assert made["denoiser_calls"] == 8
    assert _json(capsys, "policy", "validate", str(p), "--model", "tiny-unet")["valid"] is True
    remapped = _json(capsys, "policy", "remap", str(p), "--steps", "5", "--out", str(tmp_path / "p5.json"))
    assert remapped["steps"] == 5 and Policy.load(tmp_path / "p5.json").steps == 5


def test_policy_errors_are_one_line(capsys, tmp_path):
    p = tmp_path / "p.json"
    _json(capsys, "policy", "make", "--model", "tiny-unet", "--steps", "4", "--out", str(p))
    assert main(["policy", "validate", str(p), "--model", "tiny-dit"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: invalid policy for tiny-dit: the policy was made for another model")
    assert "\n" not in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "frdiff-policy", "version": 9}')
    assert main(["policy", "validate", str(bad)]) == 2
    assert "unsupported policy version 9" in capsys.readouterr().err
    assert main(["run", "--model", "tiny-unet", "--preset", "uniform", "--policy", str(p)]) == 2
    assert "exactly one of --policy" in capsys.readouterr().err


def test_policy_from_recorded_run(capsys, tmp_path):
    run_dir = tmp_path / "run"
    _json(capsys, "record", "--model", "tiny-unet", "--steps", "8", "--seed", "0-1", "--reduce", "stats",
          "--out", str(run_dir))
    out = _json(capsys, "policy", "from-run", str(run_dir), "--threshold", "0.3", "--out", str(tmp_path / "t.json"))
    policy = Policy.load(tmp_path / "t.json")
    assert policy.steps == 8 and len(policy.blocks) == 18 and policy.provenance["threshold"] == 0.3
    assert out["keyframes_per_block"] == policy.keyframes.sum(1).tolist()
    assert all(1 <= k <= 8 for k in out["keyframes_per_block"])
    # a larger threshold never needs more keyframes
    loose = _json(capsys, "policy", "from-run", str(run_dir), "--threshold", "5", "--out", str(tmp_path / "l.json"))
    assert all(a <= b for a, b in zip(loose["keyframes_per_block"], out["keyframes_per_block"], strict=True))
    assert loose["keyframes_per_block"] == [1] * 18
    # reuse settings are the run's to choose: given anyway, they are refused, not dropped
    target = tmp_path / "x.json"
    assert main(["policy", "from-run", str(run_dir), "--target-compute", "0.5", "--out", str(target),
                 "--skip-space", "data", "--warmup", "2"]) == 2
    err = capsys.readouterr().err
    assert "--skip-space, --warmup are for policy make and run" in err and not target.exists()


@pytest.mark.parametrize("preset,calls", [("none", 6), ("reduced-nfe", 3)])
def test_run_json_reports_against_the_no_reuse_run(capsys, tmp_path, preset, calls):
    report = _json(capsys, "run", "--model", "tiny-unet", "--preset", preset, "--interval", "2", "--steps", "6",
                   "--seeds", "0-3", "--out", str(tmp_path / preset))
    for key in ("latency_s", "reference_latency_s", "speedup", "predicted_speedup", "denoiser_calls", "psnr", "ssim",
                "max_abs_diff"):
        assert key in report
    assert report["denoiser_calls"] == calls and "fd_shapes" not in report  # fewer than 64 samples
    if preset == "none":
        assert report["max_abs_diff"] == 0.0 and report["psnr"] == 100.0 and report["ssim"] == pytest.approx(1.0)
        assert report["predicted_speedup"] == 1.0
    else:
        assert report["max_abs_diff"] > 0 and report["psnr"] < 100 and report["predicted_speedup"] == 2.0
    assert (tmp_path / preset / "variant.png").exists() and (tmp_path / preset / "policy.json").exists()


def test_psnr_and_ssim_match_hand_values():
    from workbench.metrics import compare_images

    ref = torch.zeros(2, 3, 8, 8)
    img = ref.clone()
    img[1] += 0.2  # [-1, 1] offset 0.2 = 0.1 in [0, 1] → MSE 0.01 → 20 dB
    m = compare_images(ref, img)
    assert m["psnr_per_image"] == pytest.approx([100.0, 20.0])
    assert m["psnr"] == pytest.approx(60.0) and m["max_abs_diff"] == pytest.approx(0.2)
