"""``policy make`` from a model's metadata file (workbench.models.meta, workbench.quickpolicy; issue 21): the shipped
files are what the loaded models give, the fast path writes byte for byte the slow path's policy and prints its
report, it imports neither torch nor diffusers, and anything it cannot vouch for takes the slow path."""

import argparse
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import frdiff
from frdiff import policy as frdiff_policy
from frdiff import presets as frdiff_presets
from workbench import quickpolicy
from workbench.cli import engine, main
from workbench.models import meta
from workbench.models.catalog import embedded_path
from workbench.models.zoo import load_pipeline

MODELS = ("tiny-unet", "tiny-dit", "tiny-sd")
PRESETS = ("none", "uniform", "reduced-nfe", "deepcache")


@pytest.fixture(scope="module")
def pipes():
    return {m: load_pipeline(m) for m in MODELS}


@pytest.fixture(scope="module")
def cards():
    return {m: meta.load(m) for m in MODELS}


# ---- the shipped metadata ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_shipped_metadata_is_what_the_loaded_model_gives(model, pipes):
    folder = embedded_path(model)
    card, reasons = meta.read(folder)
    assert reasons == [] and card is not None
    fresh = meta.derive(pipes[model], folder)
    assert card == fresh  # blocks, fingerprint, timesteps, measured FLOP shares and cache sizes, config hashes
    assert (folder / meta.FILE).read_text() == meta.to_text(fresh)  # byte for byte what `meta` writes
    den = frdiff.denoiser_of(pipes[model])
    assert card["model"] == {"architecture": type(den).__name__, "fingerprint": frdiff.model_fingerprint(den)}
    assert [tuple(b) for b in card["blocks"]] == frdiff.find_blocks(den)
    assert len(card["blocks"]) == {"tiny-unet": 18, "tiny-dit": 6, "tiny-sd": 18}[model]


def test_meta_check_passes_on_the_shipped_files(capsys):
    for model in MODELS:
        assert main(["meta", "--model", model, "--check", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["current"] is True


def test_the_plain_python_copies_of_frdiffs_constants_are_frdiffs():
    import torch

    assert (quickpolicy.FORMAT, quickpolicy.VERSION) == (frdiff_policy.FORMAT, frdiff_policy.VERSION)
    assert quickpolicy.REUSE_MODES == frdiff_policy.REUSE_MODES and quickpolicy.ORDERS == frdiff_policy.ORDERS
    assert quickpolicy.FORECAST_AXES == frdiff_policy.FORECAST_AXES
    assert quickpolicy.SKIP_SPACES == frdiff_policy.SKIP_SPACES
    assert quickpolicy.GRANULARITIES == frdiff_policy.GRANULARITIES
    assert quickpolicy.KINDS == tuple(frdiff_policy.KIND_GRANULARITIES)
    assert tuple(quickpolicy.CACHE_DTYPES) == frdiff_policy.CACHE_DTYPES
    assert all(getattr(torch, d).itemsize == n for d, n in quickpolicy.CACHE_DTYPES.items())
    assert quickpolicy.PRESETS == tuple(p for p in frdiff_presets.PRESETS if p != "threshold")
    assert quickpolicy.LAMBDA_EPS == frdiff_policy.LAMBDA_EPS
    default = frdiff.Mixing()
    assert (quickpolicy.CENTER, quickpolicy.SLOPE) == (default.center, default.slope)
    for names in (["a", "b", "c"], ["x"], ["down_blocks.0.r", "up_blocks.1.r", "up_blocks.3.r", "up_blocks.3.a"], []):
        assert quickpolicy.shallow_blocks(names) == frdiff_presets.shallow_blocks(names)


# ---- the fast path against the slow one -----------------------------------------------------------------------------
def _args(**kw) -> argparse.Namespace:
    base = dict(preset="uniform", steps=20, scheduler="ddim", interval=2, mix=False, reuse="hold", skip_reuse=None,
                forecast_axis="step", cache_dtype=None, granularity=None, warmup=0, last_keyframe=False,
                skip_space="output")
    return argparse.Namespace(**{**base, **kw})


GRID = [dict(preset=p, steps=s, interval=i, mix=m) for p, s, i, m in itertools.product(
    PRESETS, (1, 2, 7, 10, 20, 30, 50, 1000), (1, 2, 3, 4, 7), (False, True))]
OPTIONS = [dict(), dict(granularity="block"), dict(granularity="feature"), dict(reuse="taylor1"),
           dict(reuse="taylor2", skip_reuse="hold", forecast_axis="timestep"), dict(skip_reuse="taylor2"),
           dict(cache_dtype="float16"), dict(cache_dtype="bfloat16", reuse="taylor1"), dict(cache_dtype="float32"),
           dict(scheduler="dpmpp"), dict(scheduler="unipc", granularity="block", reuse="taylor2"),
           dict(warmup=2), dict(last_keyframe=True), dict(warmup=2, last_keyframe=True, reuse="taylor2"),
           dict(warmup=7, last_keyframe=True, granularity="block"), dict(warmup=60),
           dict(skip_reuse="taylor1", skip_space="data"), dict(scheduler="unipc", reuse="taylor2", skip_space="data")]
CASES = GRID + [dict(preset=p, steps=s, interval=i, mix=m, **o) for (p, s, i, m), o in zip(
    itertools.cycle(itertools.product(PRESETS, (9, 20, 50), (2, 3), (False, True))), OPTIONS * 8)]


@pytest.mark.parametrize("model", MODELS)
def test_fast_policy_is_the_slow_policy_byte_for_byte_with_the_same_report(model, pipes, cards):
    """Every preset over step counts, intervals, mixing and every reuse option: the slow path's own code (the
    CLI's _preset on the loaded model, frdiff's speedup and cache model on the measured shares) against the fast
    path on the metadata."""
    card, pipe = cards[model], pipes[model]
    savings = card["savings"]  # equal to the shares measured on the model (test above)
    kinds_seen = set()
    for case in CASES:
        args = _args(**case)
        slow = engine._preset(args, pipe, args.steps)
        fast = quickpolicy.make(card, args.preset, args.steps, scheduler=args.scheduler, interval=args.interval,
                                mix=args.mix, reuse=args.reuse, skip_reuse=args.skip_reuse,
                                forecast_axis=args.forecast_axis, cache_dtype=args.cache_dtype,
                                granularity=args.granularity, warmup=args.warmup, last=args.last_keyframe,
                                skip_space=args.skip_space)
        assert quickpolicy.to_json(fast) == slow.to_json(), case
        expected = {"blocks": len(slow.blocks), "steps": slow.steps, "denoiser_calls": slow.denoiser_calls(),
                    "step_kinds": engine._kinds_line(slow),
                    "predicted_speedup": frdiff.predicted_speedup(slow, savings),
                    "cache_bytes": frdiff.cache_bytes(slow, savings, batch=savings["batch"]),
                    "reuse": slow.reuse_summary()}
        assert quickpolicy.report(fast, savings) == expected, case
        assert quickpolicy.step_costs(fast, savings) == frdiff.step_costs(slow, savings)
        kinds_seen |= set(expected["step_kinds"])
    assert kinds_seen == {"K", "r", "-"}  # the grid reaches full, FR and skipped steps


def _spy(monkeypatch) -> list:
    """Record whether each policy make was served by the fast path."""
    served, real = [], engine._quick_make

    def spy(args):
        out = real(args)
        served.append(out is not None)
        return out

    monkeypatch.setattr(engine, "_quick_make", spy)
    return served


def _make(capsys, out: Path, *argv) -> tuple[int, str, str, bytes | None]:
    rc = main(["policy", "make", *argv, "--out", str(out)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, out.read_bytes() if out.exists() else None


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("argv", [
    ("--steps", "20"), ("--preset", "uniform", "--mix", "--steps", "10", "--json"),
    ("--preset", "reduced-nfe", "--interval", "3", "--steps", "30"), ("--preset", "deepcache", "--json"),
    ("--preset", "none", "--steps", "5", "--json"),
    ("--steps", "25", "--reuse", "taylor2", "--skip-reuse", "taylor1", "--forecast-axis", "timestep",
     "--cache-dtype", "float16", "--granularity", "block", "--scheduler", "euler"),
    ("--preset", "reduced-nfe", "--interval", "4", "--warmup", "2", "--last-keyframe", "--reuse", "taylor2"),
])
def test_the_cli_prints_and_writes_the_same_either_way(model, argv, capsys, tmp_path, monkeypatch, pipes):
    served = _spy(monkeypatch)
    fast = _make(capsys, tmp_path / "fast.json", "--model", model, *argv)
    monkeypatch.setattr(engine, "load_model", lambda args: pipes[args.model])  # the slow path, its model loaded once
    monkeypatch.setattr(engine, "_quick_make", lambda args: None)
    slow = _make(capsys, tmp_path / "slow.json", "--model", model, *argv)
    assert served == [True] and fast[0] == 0 and fast[3] is not None
    assert fast[1:] == (slow[1].replace("slow.json", "fast.json"), *slow[2:])  # stdout, stderr, the file's bytes


def test_the_fast_path_imports_neither_torch_nor_diffusers(tmp_path):
    code = ("import json, sys\nfrom workbench.cli import main\n"
            f"rc = [main(['policy', 'make', '--model', m, '--steps', '20', '--out', {str(tmp_path)!r} + '/' + m]) "
            f"for m in {MODELS!r}]\n"
            "print(json.dumps({'rc': rc, 'heavy': sorted(k for k in ('torch', 'diffusers') if k in sys.modules)}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"rc": [0] * len(MODELS), "heavy": []}
    for model in MODELS:
        shipped = json.loads((embedded_path(model) / meta.FILE).read_text())
        assert frdiff.Policy.load(tmp_path / model).model == shipped["model"]


# ---- what the fast path does not serve ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv,error", [
    (("--preset", "sometimes"), "error: invalid policy: unknown preset 'sometimes'; choose one of none, uniform, "
                                "reduced-nfe, deepcache, threshold"),
    (("--preset", "threshold"), "error: invalid policy: the threshold preset needs a recorded run: use "
                                "threshold_policy (CLI: policy from-run)"),
    (("--steps", "5000"), "error: --steps 5000 is more than the scheduler's 1000 training timesteps; use at most 1000"),
])
def test_bad_input_takes_the_slow_path_and_its_one_line_error(argv, error, capsys, tmp_path, monkeypatch, pipes):
    served = _spy(monkeypatch)
    monkeypatch.setattr(engine, "load_model", lambda args: pipes[args.model])
    rc, out, err, written = _make(capsys, tmp_path / "p.json", "--model", "tiny-dit", *argv)
    assert (rc, served, written) == (2, [False], None)
    assert err == error + "\n" and out == ""


@pytest.mark.parametrize("argv,error", [
    (("--interval", "0"), "error: argument --interval: must be an integer ≥ 1, got '0'"),
    (("--steps", "0"), "error: argument --steps: must be an integer ≥ 1 and ≤ 10000, got '0'"),
])
def test_counts_out_of_range_are_refused_before_either_path(argv, error, capsys, tmp_path, monkeypatch):
    served = _spy(monkeypatch)
    with pytest.raises(SystemExit) as exc:  # argparse
        _make(capsys, tmp_path / "p.json", "--model", "tiny-dit", *argv)
    err = capsys.readouterr().err
    assert (exc.value.code, served, err.splitlines()[0].split(" (see")[0]) == (2, [], error)
    assert not (tmp_path / "p.json").exists()


def test_only_the_cpu_is_served_from_the_metadata():
    args = argparse.Namespace(model="tiny-unet", **vars(_args()), out="unused.json")
    for device in ("cuda", "cuda:1", "mps"):
        args.device = device
        assert engine._quick_make(args) is None
    assert meta.load("owner/some-hub-model") is None and meta.load("no-such-folder") is None


@pytest.fixture
def dit_copy(tmp_path):
    folder = tmp_path / "dit"
    shutil.copytree(embedded_path("tiny-dit"), folder, ignore=shutil.ignore_patterns(meta.FILE, "*.png"))
    return folder


def test_a_local_folder_is_served_once_meta_has_written_its_file(dit_copy, capsys, tmp_path, monkeypatch):
    served = _spy(monkeypatch)
    assert meta.read(dit_copy) == (None, [f"no {meta.FILE} in {dit_copy}"])
    slow = _make(capsys, tmp_path / "slow.json", "--model", str(dit_copy), "--steps", "12", "--mix", "--json")
    assert main(["meta", "--model", str(dit_copy)]) == 0
    capsys.readouterr()
    fast = _make(capsys, tmp_path / "fast.json", "--model", str(dit_copy), "--steps", "12", "--mix", "--json")
    assert served == [False, True]
    assert fast[0] == 0 and fast[3] == slow[3]
    assert json.loads(fast[1]) == {**json.loads(slow[1]), "out": str(tmp_path / "fast.json")}
    # a copy of the shipped model: the same metadata but for its own folder's (identical) config hashes
    assert meta.read(dit_copy)[0] == json.loads((embedded_path("tiny-dit") / meta.FILE).read_text())


def test_a_changed_config_makes_the_file_stale_and_the_slow_path_sees_the_change(dit_copy, capsys, tmp_path,
                                                                               monkeypatch):
    assert main(["meta", "--model", str(dit_copy)]) == 0
    capsys.readouterr()
    config = dit_copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"num_train_timesteps": 1000', '"num_train_timesteps": 500'))
    card, reasons = meta.read(dit_copy)
    assert card is None
    assert reasons == ["config files changed since the metadata was written: scheduler/scheduler_config.json"]
    assert main(["meta", "--model", str(dit_copy), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: the policy metadata of {dit_copy} is not current (config files changed")
    assert err.count("\n") == 1
    served = _spy(monkeypatch)
    rc, _, err, _ = _make(capsys, tmp_path / "p.json", "--model", str(dit_copy), "--steps", "600")
    assert (rc, served) == (2, [False])
    assert err == "error: --steps 600 is more than the scheduler's 500 training timesteps; use at most 500\n"


def test_other_versions_missing_weights_and_edited_files_are_not_served(dit_copy, capsys, monkeypatch):
    assert main(["meta", "--model", str(dit_copy)]) == 0
    capsys.readouterr()
    assert meta.read(dit_copy)[1] == []
    written = meta.read(dit_copy)[0]["environment"]
    with monkeypatch.context() as m:
        m.setattr(meta, "environment", lambda: {**written, "diffusers": "99.0"})
        assert meta.read(dit_copy)[1] == [f"written with {written}, this environment has "
                                          f"{ {**written, 'diffusers': '99.0'} }"]
    path = dit_copy / meta.FILE
    text = path.read_text()
    card = json.loads(text)
    for edit in ({"version": 2}, {"format": "something"}, {"blocks": []}, {"train_timesteps": "1000"},
                 {"savings": {**card["savings"], "batch": 2.0}},
                 {"savings": {**card["savings"], "feature": {}}}, {"savings": {**card["savings"], "cached_numel": []}},
                 {"blocks": card["blocks"] + card["blocks"][:1]}, {"model": {"architecture": "DiT"}}):
        path.write_text(json.dumps({**card, **edit}))
        assert meta.read(dit_copy)[0] is None, edit
    path.write_text("{not json")
    assert meta.read(dit_copy)[0] is None
    path.write_text(text)
    weights = dit_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(b"\xff" * 64)
    assert meta.read(dit_copy)[1] == [f"weights file {weights} has no readable safetensors header"]
    weights.unlink()
    assert meta.read(dit_copy)[1] == [f"{weights.parent} has no .safetensors weights"]
    weights.write_bytes(good)
    assert meta.read(dit_copy) == (json.loads(text), [])
