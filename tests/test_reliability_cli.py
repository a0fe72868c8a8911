"""The CLI under bad input and faults (issue 16): every error is one ``error:`` line on stderr and exit code 2,
no traceback (unless ``--debug``), nothing an earlier run wrote is lost, ``--json`` stays one JSON object.

In-process through ``workbench.cli.main`` (one model load each, no interpreter start) except the kill -9 test,
which needs a process to kill. The shipped tiny-dit, few steps, one thread (the machine is shared).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.record.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
CHOICES = "choose one of ddim, dpmpp, euler, unipc, ddpm"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fails(capsys, *argv: str) -> str:
    """Run the CLI, expect exit code 2 and return its one stderr line (asserted to be one, without traceback)."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def ok(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object, on one line, strict (no NaN or Infinity)
    return json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON output"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


RECORD = ("record", "--model", "tiny-dit", "--class", "ring", "--steps", "3", "--seed", "0-1",
          "--blocks", "transformer_blocks.0", "--reduce", "pool16")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A sound 3-step run recorded through the CLI."""
    out = tmp_path_factory.mktemp("cli") / "run"
    main([*RECORD, "--out", str(out), "--json"])
    return out


@pytest.fixture
def run(recorded, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(recorded, out)
    return out


# ---- argument errors: one line, the choices named -------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    ("sample", "--n", "1"), ("run", "--preset", "none"), ("record", "--out", "x"), ("policy", "make", "--out", "p"),
])
def test_an_unknown_scheduler_lists_the_choices(capsys, command):
    line = fails(capsys, *command, "--scheduler", "foo")
    assert line.startswith(f"error: argument --scheduler: unknown scheduler 'foo'; {CHOICES}")


def test_argparse_errors_are_one_line(capsys):
    assert fails(capsys, "record", "--model", "tiny-dit").startswith(
        "error: the following arguments are required: --out (see `python -m workbench record --help`)")
    assert "argument --steps: an integer is needed, got 'many'" in fails(capsys, "sample", "--steps", "many")


def test_too_many_steps_or_images(capsys, tmp_path):
    assert fails(capsys, "sample", "--model", "tiny-dit", "--n", "1", "--steps", "5000") == (
        "error: --steps 5000 is more than the scheduler's 1000 training timesteps; use at most 1000")
    assert fails(capsys, "record", "--model", "tiny-dit", "--steps", "5000", "--out", str(tmp_path / "r")) == (
        "error: --steps 5000 is more than the scheduler's 1000 training timesteps; use at most 1000")
    assert not (tmp_path / "r").exists()
    assert fails(capsys, "run", "--model", "tiny-dit", "--preset", "uniform", "--steps", "1001") == (
        "error: --steps 1001 is more than the scheduler's 1000 training timesteps; use at most 1000")
    assert fails(capsys, "sample", "--n", "100000") == (
        "error: --n 100000 is more than 10000 images in one run; sample in several runs (--seed S starts each at "
        "seed S)")


def test_a_policy_with_more_steps_than_the_scheduler_is_one_line(capsys, tmp_path):
    import frdiff
    from workbench.models.zoo import load_pipeline

    path = tmp_path / "long.json"
    frdiff.make_preset("uniform", frdiff.denoiser_of(load_pipeline("tiny-dit")), 2000, interval=2).save(path)
    assert fails(capsys, "run", "--model", "tiny-dit", "--policy", str(path), "--seeds", "0") == (
        f"error: the policy {path} has 2000 steps, more than the scheduler's 1000 training timesteps; remap it: "
        f"python -m workbench policy remap {path} --steps 1000 --out P.json")


def test_sample_reports_progress_per_batch(capsys):
    from workbench.models.zoo import load_pipeline
    from workbench.sampling import sample

    seen = []
    result = sample(load_pipeline("tiny-dit"), [0, 1, 2], [0, 1, 2], steps=1, batch_size=2,
                    progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 3), (3, 3)] and result.images.shape == (3, 3, 32, 32)


# ---- outputs that are the wrong kind of path ------------------------------------------------------------------------
def test_outputs_of_the_wrong_kind_are_refused_before_any_work(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    assert fails(capsys, *RECORD, "--out", str(tmp_path / "file")) == (
        f"error: {tmp_path / 'file'} is a file, not a folder: give a new folder for the run")
    assert fails(capsys, "run", "--model", "tiny-dit", "--preset", "none", "--out", str(tmp_path / "file")) == (
        f"error: --out {tmp_path / 'file'} is a file; give a folder")
    assert fails(capsys, "policy", "make", "--model", "tiny-dit", "--out", str(tmp_path / "folder")) == (
        f"error: --out {tmp_path / 'folder'} is a folder; give a file name such as {tmp_path / 'folder' / 'P.json'}")
    assert fails(capsys, "sample", "--out", str(tmp_path / "folder")).startswith(
        f"error: --out {tmp_path / 'folder'} is a folder")
    assert (tmp_path / "file").read_text() == "x" and list((tmp_path / "folder").iterdir()) == []  # no stray .tmp


# ---- recording never replaces or deletes what it did not make ------------------------------------------------------
def test_record_into_an_earlier_run_is_refused_then_overwrite_keeps_other_files(capsys, run):
    before = snapshot(run)
    line = fails(capsys, *RECORD, "--out", str(run))
    assert line == (f"error: {run} already holds a recorded run (tiny-dit); record into a new folder, or pass "
                    "--overwrite to replace that run (only its manifest.json, arrays.zarr and part-* folders; other "
                    "files stay)")
    assert snapshot(run) == before
    (run / "notes.txt").write_text("mine")
    rec = ok(capsys, *RECORD[:6], "2", *RECORD[7:], "--out", str(run), "--overwrite")
    assert rec["complete"] is True and rec["steps"] == 2
    assert (run / "notes.txt").read_text() == "mine" and FeatureStore.open(run).steps_done == 2


def test_record_into_a_folder_of_user_files_is_refused(capsys, tmp_path):
    out = tmp_path / "mine"
    (out / "arrays.zarr").mkdir(parents=True)
    (out / "arrays.zarr" / "precious.txt").write_text("do not delete")
    for extra in ((), ("--overwrite",)):
        line = fails(capsys, *RECORD, "--out", str(out), *extra)
        assert line == (f"error: {out} is not empty and not a recorded run (it holds arrays.zarr); record into a "
                        "new or empty folder")
    assert (out / "arrays.zarr" / "precious.txt").read_text() == "do not delete"


def test_a_budget_refusal_leaves_nothing_behind(capsys, tmp_path):
    line = fails(capsys, *RECORD, "--budget-mb", "0.001", "--out", str(tmp_path / "a" / "b"))
    assert "the store would take" in line and "the disk budget is 0.0 MiB" in line
    assert not (tmp_path / "a").exists()


# ---- damaged stores: an error naming what is missing, never zeros ---------------------------------------------------
def test_analyze_of_a_missing_chunk_is_an_error_not_zeros(capsys, run):
    shutil.rmtree(run / "arrays.zarr/features/0/c/2")  # the issue's `rm -rf RUN/arrays.zarr/features/0/c/3`, 3 steps
    assert fails(capsys, "analyze", str(run)) == (
        f"error: {run} is damaged: block transformer_blocks.0 (features/0) has no data for step(s) 2 (chunk files "
        "missing)")
    assert fails(capsys, "policy", "from-run", str(run), "--threshold", "0.3", "--out", str(run / "p.json")).startswith(
        f"error: {run} is damaged: block transformer_blocks.0")
    runs = ok(capsys, "runs", str(run.parent))["runs"]
    assert [(r["status"], r["reason"]) for r in runs] == [
        ("damaged", "block transformer_blocks.0 (features/0) has no data for step(s) 2 (chunk files missing)")]


def test_analyze_of_a_corrupt_chunk_names_block_and_step(capsys, run):
    chunk = run / "arrays.zarr/features/0/c/1/1/0/0/0"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 1
    chunk.write_bytes(bytes(data))
    assert fails(capsys, "analyze", str(run)) == (
        f"error: {run}: block transformer_blocks.0 (features/0) is corrupt at step 1: its chunk fails its crc32c "
        "checksum")


@pytest.mark.parametrize("damage,message", [
    (lambda r: shutil.rmtree(r / "arrays.zarr/stats"), "is damaged: stats/cosine is missing; stats/rel_l1 is missing"),
    (lambda r: (r / "manifest.json").write_text("[]"), "is not a workbench run manifest (a JSON list, not an object)"),
    (lambda r: (r / "manifest.json").write_text(
        (r / "manifest.json").read_text().replace('"steps_done": 3', '"steps_done": "3"')),
     "'steps_done' is not an integer (str)"),
    (lambda r: shutil.rmtree(r), "does not exist"),
])
def test_analyze_of_a_broken_store_is_one_line(capsys, run, damage, message):
    damage(run)
    assert message in fails(capsys, "analyze", str(run))


def test_runs_lists_broken_runs_and_goes_on(capsys, run, recorded):
    shutil.copytree(recorded, run.parent / "good")
    (run / "manifest.json").write_text("[1, 2]")  # today this crashed `runs` for every run
    rows = {Path(r["path"]).name: r for r in ok(capsys, "runs", str(run.parent))["runs"]}
    assert rows["good"]["status"] == "complete"
    assert rows["run"]["status"] == "broken" and "a JSON list, not an object" in rows["run"]["reason"]
    capsys.readouterr()
    assert main(["runs", str(run.parent)]) == 0
    text = capsys.readouterr().out
    assert f"broken      {run}: {run / 'manifest.json'} is not a workbench run manifest" in text
    assert "complete" in text


# ---- bugs: one line with the type, --debug for the traceback --------------------------------------------------------
def test_an_unexpected_exception_is_one_line_and_debug_shows_it(capsys, monkeypatch):
    import workbench.cli.models as models

    def boom(_args):
        raise ZeroDivisionError("something broke\nacross lines")

    monkeypatch.setattr(models, "cmd_models", boom)
    assert fails(capsys, "models") == (
        "error: ZeroDivisionError: something broke across lines (an unexpected error; rerun with --debug for the "
        "traceback)")
    with pytest.raises(ZeroDivisionError):
        main(["models", "--debug"])
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "models"])


# ---- a hard kill while recording -----------------------------------------------------------------------------------
def test_kill_9_while_recording_then_record_again_and_analyze_both(capsys, tmp_path):
    first, second = tmp_path / "killed", tmp_path / "second"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "record", "--model", "tiny-dit", "--class", "ring",
                             "--steps", "400", "--seed", "0", "--blocks", "transformer_blocks.0", "--reduce", "pool16",
                             "--out", str(first), "--json"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    done = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = json.loads((first / "manifest.json").read_text())["steps_done"]
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still sampling when killed
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and done >= 1
    ok(capsys, *RECORD, "--out", str(second))
    manifest = json.loads((first / "manifest.json").read_text())
    a, b = ok(capsys, "analyze", str(first)), ok(capsys, "analyze", str(second))
    assert a["complete"] is False and a["steps"] == manifest["steps_done"] < 400
    assert a["timesteps"] == manifest["recorded_timesteps"] == manifest["timesteps"][: a["steps"]]
    assert "incomplete run" in " ".join(a["notes"])
    assert b["complete"] is True and b["steps"] == 3
    store = FeatureStore.open(first)  # the steps done are there, not zeros (nor the NaN of unwritten steps)
    maps, rel = store.features("transformer_blocks.0"), store.stats("transformer_blocks.0")["rel_l1"]
    assert maps.shape[0] == store.steps_done == manifest["steps_done"]
    assert np.isfinite(maps).all() and (np.abs(maps).reshape(len(maps), -1).max(1) > 0).all()
    assert np.isfinite(rel[1:]).all() and (rel[1:] > 0).all()
    assert np.isfinite(store.latents()).all() and (store.latents().reshape(len(maps), -1).std(1) > 0).all()


# ---- the second audit (session 13): what used to be lost, or reported as a bug ---------------------------------------
def test_policy_commands_replace_policies_and_nothing_else(capsys, run, tmp_path):
    """``policy make/remap/from-run`` and ``autofr`` write policies: an existing file that is not one — a run's
    manifest.json, notes — is refused before any work (it used to be overwritten, and the run lost); a policy file
    is replaced, keeping its mode."""
    before = snapshot(run)
    line = fails(capsys, "policy", "make", "--model", "tiny-dit", "--steps", "4", "--out", str(run / "manifest.json"))
    assert line == (f"error: --out {run / 'manifest.json'} exists and is not an FRDiff policy file; give another "
                    f"file name (nothing was written)")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    for argv in (("policy", "remap", str(notes), "--steps", "4"), ("autofr", "--model", "tiny-dit"),
                 ("policy", "from-run", str(run), "--threshold", "0.1")):
        assert "exists and is not an FRDiff policy file" in fails(capsys, *argv, "--out", str(notes))
    assert snapshot(run) == before and notes.read_text() == '{"mine": 1}'
    policy = tmp_path / "p.json"
    ok(capsys, "policy", "make", "--model", "tiny-dit", "--steps", "4", "--out", str(policy))
    os.chmod(policy, 0o640)
    ok(capsys, "policy", "remap", str(policy), "--steps", "6", "--out", str(policy))  # in place
    assert json.loads(policy.read_text())["steps"] == 6 and policy.stat().st_mode & 0o777 == 0o640
    fresh = tmp_path / "fresh.json"
    ok(capsys, "policy", "make", "--model", "tiny-dit", "--steps", "4", "--out", str(fresh))
    mask = os.umask(0)
    os.umask(mask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~mask  # open()'s mode, not mkstemp's owner-only 0600


def test_a_failed_image_write_keeps_the_earlier_image(capsys, tmp_path, monkeypatch):
    """``sample --out grid.png`` over an earlier grid, the disk full mid-write: the earlier file is intact (it used to
    be truncated in place), no temporary file is left, and the error is one line."""
    from PIL import Image

    grid = tmp_path / "grid.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(grid)
    before = grid.read_bytes()

    def full_disk(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    line = fails(capsys, "sample", "--model", "tiny-dit", "--n", "1", "--steps", "1", "--out", str(grid))
    assert "No space left on device" in line
    assert grid.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


@pytest.mark.parametrize("argv, message", [
    (("record", "--model", "tiny-dit", "--guidance", "nan", "--out", "r"), "argument --guidance: must be a finite "
     "number ≥ 0, got 'nan'"),
    (("sample", "--guidance", "inf"), "argument --guidance: must be a finite number ≥ 0, got 'inf'"),
    (("policy", "from-run", "r", "--threshold", "nan", "--out", "p.json"), "argument --threshold: must be a finite "
     "number ≥ 0, got 'nan'"),
    (("analyze", "r", "--threshold", "nan"), "argument --threshold: must be a finite number ≥ 0"),
    (("record", "--budget-mb", "nan", "--out", "r"), "argument --budget-mb: must be a finite number > 0"),
    (("policy", "remap", "p.json", "--steps", "10001", "--out", "q.json"), "argument --steps: must be an integer ≥ 1 "
     "and ≤ 10000, got '10001'"),
    (("policy", "remap", "p.json", "--out", "q.json"), "policy remap needs --steps S"),
    (("policy", "from-run", "r", "--threshold", "0.1", "--candidates", "0", "--out", "p.json"),
     "argument --candidates: must be an integer ≥ 1, got '0'"),
    (("policy", "from-run", "r", "--threshold", "0.1", "--scheduler", "euler", "--out", "p.json"),
     "--scheduler is for policy make and run"),
    (("policy", "validate", "p.json", "--out", "q.json"), "policy validate reads a policy and writes nothing"),
    (("run", "--policy", "p.json", "--steps", "99"), "--steps is for presets; p.json carries its own step count"),
    (("autofr", "--target-compute", "abc"), "argument --target-compute: a number is needed, got 'abc'"),
    (("autofr", "--iterations", "0"), "argument --iterations: must be an integer ≥ 1, got '0'"),
    (("autofr", "--penalty", "-1"), "argument --penalty: must be a finite number ≥ 0, got '-1'"),
    (("sample", "--seed", "99999999999999999999"), "argument --seed: must be an integer ≥ 0"),
    (("run", "--preset", "uniform", "--seeds", "0-999999999"), "'0-999999999' asks for more than 100000 images"),
    (("sample", "--model", "tiny-sd", "--prompt", "x", "--height", "100000"), "argument --height: must be an "
     "integer ≥ 8 and ≤ 4096, got '100000'"),
    (("sample", "--model", "tiny-sd", "--prompt", "x", "--width", "100"), "argument --width: must be a multiple of 8"),
    (("sample", "--device", "banana"), "argument --device: a device is cpu, cuda, cuda:N or mps, got 'banana'"),
    (("sample", "--out", "grid.txt"), "--out grid.txt: cannot write an image with extension '.txt'"),
    (("train", "--model", "tiny-dit", "--sample-every", "-1", "--out", "t"), "warmup and sample_every must be 0 or "
     "more, got 500 and -1"),
    (("train", "--model", "tiny-dit", "--time-limit-min", "-1", "--out", "t"), "time_limit_min must be a positive "
     "number of minutes, got -1.0"),
])
def test_bad_values_are_one_line_before_any_work(capsys, tmp_path, monkeypatch, argv, message):
    """NaN, infinities, out-of-range counts, typos that would ask for terabytes, flags a command would ignore: one
    line each, before any model loads (these were accepted, ignored, or reported as a bug)."""
    monkeypatch.chdir(tmp_path)
    line = fails(capsys, *argv)
    assert message in line
    assert list(tmp_path.iterdir()) == []  # nothing made


def test_cuda_on_a_machine_without_it_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = fails(capsys, "blocks", "--model", "tiny-dit", "--device", "cuda")
    assert "argument --device: cuda: this machine (or this torch" in line and "use --device cpu" in line


def test_outputs_that_cannot_be_written_are_refused_before_any_work(capsys, tmp_path):
    """A file where a folder should be, or a read-only folder: refused before training or sampling (it used to come
    after, the work lost)."""
    (tmp_path / "file").write_text("x")
    line = fails(capsys, "autofr", "--model", "tiny-dit", "--out", str(tmp_path / "file" / "af.json"))
    assert line == f"error: --out {tmp_path / 'file' / 'af.json'} cannot be written: {tmp_path / 'file'} is a file, " \
                   f"not a folder"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            assert fails(capsys, "sample", "--out", str(locked / "g.png")).endswith(f"{locked} is not writable")
        finally:
            locked.chmod(0o700)


def test_train_refuses_a_folder_holding_a_model(capsys, tmp_path):
    """The folder the model is written to — ``--out/tiny-dit`` (as the shipped tiny-dit's), ``--out`` itself for
    tiny-sd — holding a model is refused before training (it used to be replaced, by a 1-step checkpoint if
    stopped); a fresh ``--out`` beside such a folder is not."""
    from workbench.models.zoo import embedded_path

    out = tmp_path / "runs"
    shutil.copytree(embedded_path("tiny-dit"), out / "tiny-dit")
    before = snapshot(out)
    line = fails(capsys, "train", "--model", "tiny-dit", "--steps", "1", "--out", str(out))
    assert line.startswith(f"error: {out / 'tiny-dit'} already holds a trained model (") and line.endswith(
        "); train into a new folder, or pass --overwrite to replace it (checkpoints are written there as training "
        "goes)")
    (out / "sd").mkdir()
    (out / "sd" / "model_index.json").write_text("{}")
    assert fails(capsys, "train", "--model", "tiny-sd", "--steps", "1", "--out", str(out / "sd")).startswith(
        f"error: {out / 'sd'} already holds a trained model (model_index.json)")
    assert snapshot(out) == {**before, "sd/model_index.json": b"{}"}


def test_a_model_index_that_is_not_an_object_is_one_line(capsys, tmp_path):
    (tmp_path / "model_index.json").write_text("[1, 2]")
    assert fails(capsys, "blocks", "--model", str(tmp_path)) == (
        f"error: {tmp_path / 'model_index.json'} is not a diffusers model index (a JSON list, not an object)")
