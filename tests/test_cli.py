import json
import subprocess
import sys

import pytest

from workbench.cli import UserError, main, parse_seeds


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=300)


def test_every_subcommand_has_help():
    from workbench.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = {m["name"]: m for m in report["models"]}
    assert set(names) == {"tiny-unet", "tiny-dit", "tiny-sd"}
    assert all(0 < m["parameters"] <= 8_000_000 and m["weights"] for m in names.values())


def test_sample_json_one_object(tmp_path):
    out = tmp_path / "grid.png"
    proc = run_cli("sample", "--model", "tiny-dit", "--class", "ring", "--n", "2", "--steps", "3",
                   "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["n"] == 2 and report["cls"] == "ring" and report["latency_s"] > 0
    assert 0.0 <= report["class_accuracy"] <= 1.0 and "fd_shapes" not in report
    assert out.exists() and out.stat().st_size > 0


def test_bad_inputs_give_one_line_errors():
    proc = run_cli("sample", "--model", "nope", "--n", "1", "--steps", "1")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown model 'nope'")
    assert "Traceback" not in proc.stderr
    proc = run_cli("sample", "--model", "tiny-dit", "--class", "hexagon", "--n", "1", "--steps", "1")
    assert proc.returncode == 2 and "unknown class 'hexagon'" in proc.stderr and "Traceback" not in proc.stderr


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,5,9") == [1, 5, 9]
    assert parse_seeds("0-1,10") == [0, 1, 10]
    for bad in ("", "a-b", "5-2"):
        with pytest.raises(UserError):
            parse_seeds(bad)


def test_record_then_analyze_json(tmp_path):
    run = tmp_path / "run"
    proc = run_cli("record", "--model", "tiny-dit", "--class", "cross", "--steps", "4", "--seed", "0-1",
                   "--reduce", "stats", "--out", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout)
    assert rec["complete"] and rec["steps"] == 4 and rec["blocks"] == 6
    proc = run_cli("analyze", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["steps"] == 4 and len(report["timesteps"]) == 4
    assert [b["name"] for b in report["blocks"]] == [f"transformer_blocks.{i}" for i in range(6)]
    assert all(-1 <= b["mean_adjacent_cosine"] <= 1 and b["mean_adjacent_rel_l1"] >= 0 for b in report["blocks"])
    proc = run_cli("runs", str(tmp_path), "--json")
    assert json.loads(proc.stdout)["runs"][0]["status"] == "complete"


def test_scheduler_names_parsed_without_diffusers_are_the_workbench_schedulers():
    import argparse

    from workbench.cli.common import SCHEDULER_NAMES, scheduler_arg
    from workbench.models.schedulers import SCHEDULERS

    assert tuple(SCHEDULERS) == SCHEDULER_NAMES and scheduler_arg(" DPMPP ") == "dpmpp"
    with pytest.raises(argparse.ArgumentTypeError, match="unknown scheduler 'heun'; choose one of ddim, dpmpp"):
        scheduler_arg("heun")
