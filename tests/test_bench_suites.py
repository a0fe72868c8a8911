"""Smoke runs of the issue-8 benchmark suites at tiny size, through the CLI, and the report generated from them.

The numbers in docs/benchmarks.md come from full-size runs; these check that every suite runs and that its numbers
mean what they say (FLOP fractions of reduced NFE, engine predictions, identical runs at the PSNR cap).
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from workbench.bench.methods import Method
from workbench.bench.peers import peer_candidates
from workbench.bench.quality import bench_overhead, finite, measure
from workbench.cli import main
from workbench.metrics import PSNR_CAP_DB

STEPS = 6  # the --small reference


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for these runs: on a loaded 2-core machine two threads spin-wait on each other (the
    overhead suite took 18× longer); the smoke runs check values, not speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "quality-vs-latency", "--small", "--repeats", "1", "--out", str(out), "--json"]) == 0
    assert main(["bench", "schedulers", "--small", "--models", "tiny-dit", "--repeats", "1", "--out", str(out),
                 "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def quality(bench_dir) -> dict:
    return json.loads((bench_dir / "quality-vs-latency.json").read_text())


def test_quality_suite_records_its_command_and_setup(quality):
    assert quality["command"].startswith("python -m workbench bench quality-vs-latency --models tiny-unet,tiny-dit")
    assert "--small" in quality["command"] and quality["steps"] == STEPS and quality["n"] == 4
    assert quality["machine"]["diffusers"].startswith("0.")
    assert finite(quality)


@pytest.mark.parametrize("model", ["tiny-unet", "tiny-dit"])
def test_quality_suite_compute_fractions(quality, model):
    data = quality["models"][model]
    by_name = {m["name"]: m for m in data["methods"]}
    for m in (2, 3):  # reduced NFE: keyframes 0, M, 2M … of 6 steps call the denoiser ceil(6 / M) times
        entry = by_name[f"reduced NFE M={m}"]
        assert entry["compute_fraction"] == pytest.approx(-(-STEPS // m) / STEPS, abs=1e-9)
        assert entry["denoiser_calls"] == -(-STEPS // m)
    for k in (2, 3):  # fewer DDIM steps: k / 6 of the FLOPs, k calls
        assert by_name[f"DDIM {k}"]["compute_fraction"] == pytest.approx(k / STEPS, abs=1e-9)
        assert by_name[f"DDIM {k}"]["denoiser_calls"] == k
    for entry in data["methods"]:  # counted FLOPs match the engine's prediction for every policy
        if "predicted_compute_fraction" in entry:
            assert entry["compute_fraction"] == pytest.approx(entry["predicted_compute_fraction"], abs=1e-6)
        # SSIM lies in [-1, 1]: a policy that extrapolates 4 steps from 2 keyframes at this tiny size can score < 0
        assert -1 <= entry["ssim"] <= 1 and entry["psnr"] < PSNR_CAP_DB and entry["latency_s"] > 0
    fr = by_name["FR M=2"]
    assert by_name["reduced NFE M=2"]["compute_fraction"] < fr["compute_fraction"] < 1  # FR recomputes the light part
    families = {m["family"] for m in data["methods"]}
    assert {"DDIM (fewer steps)", "DPM-Solver++ (fewer steps)", "FRDiff uniform", "FRDiff uniform + mixing",
            "FRDiff threshold (per block)", "Auto-FR (per step)", "Auto-FR (per block)",
            "DeepCache (frdiff preset)"} <= families


def test_every_peer_is_run_or_explained(quality):
    from workbench.models.zoo import load_pipeline

    pipe = load_pipeline("tiny-dit")
    peer_families = {family for _, family, _, _ in peer_candidates(pipe, STEPS)} | {"DeepCache (package)"}
    for model, data in quality["models"].items():
        ran = {m["family"] for m in data["methods"]}
        explained = {s["family"]: s["reason"] for s in data["not_applicable"]}
        assert peer_families <= ran | set(explained), model
        assert all(reason for reason in explained.values())
    # DiT has no UNet for DeepCache; the UNet has no top-level block list for FirstBlockCache
    assert "DeepCache (package)" in {s["family"] for s in quality["models"]["tiny-dit"]["not_applicable"]}
    unet_na = {s["family"]: s["reason"] for s in quality["models"]["tiny-unet"]["not_applicable"]}
    assert "diffusers FirstBlockCache" in unet_na
    assert "diffusers FirstBlockCache" in {m["family"] for m in quality["models"]["tiny-dit"]["methods"]}


def test_identical_method_sits_at_the_psnr_cap(dit_pipe):
    seeds = [0, 1]
    r = measure(dit_pipe, [Method("same", "DDIM (fewer steps)", False, 4)], [0, 1], seeds, steps=4, flop_seeds=1)
    same = r["methods"][0]
    assert same["psnr"] == PSNR_CAP_DB and same["ssim"] == pytest.approx(1.0)
    assert same["compute_fraction"] == 1.0 and same["denoiser_calls"] == 4


def test_schedulers_suite(bench_dir):
    r = json.loads((bench_dir / "schedulers.json").read_text())
    assert r["steps"] == [4] and set(r["models"]["tiny-dit"]["4"]) == {"ddim", "dpmpp", "euler", "unipc"}
    assert r["command"] == "python -m workbench bench schedulers --models tiny-dit --repeats 1 --small"
    ddim = {v["name"]: v for v in r["models"]["tiny-dit"]["4"]["ddim"]["variants"]}
    # under DDIM, reusing ε at every other step is DDIM on half the steps: same images, same PSNR
    assert ddim["reduced NFE M=2"]["psnr"] == pytest.approx(ddim["ddim 2 steps"]["psnr"], abs=1e-4)
    assert ddim["reduced NFE M=2"]["denoiser_calls"] == 2
    assert finite(r)


def test_report_generated_from_the_jsons(bench_dir, tmp_path):
    shutil.copy(Path(__file__).parents[1] / "docs/bench/gpu-speed-h200-run1.json", bench_dir / "gpu-speed-h200.json")
    md = tmp_path / "benchmarks.md"
    assert main(["bench", "report", "--from", str(bench_dir), "--out", str(md), "--json"]) == 0
    text = md.read_text()
    quality = json.loads((bench_dir / "quality-vs-latency.json").read_text())
    for data in quality["models"].values():
        for m in data["methods"]:
            assert f"| {m['name']} |" in text
    assert quality["command"] in text and "NVIDIA H200" in text and "## Summary" in text
    assert "at matched denoiser FLOPs" in text  # the generated summary
    # issue 18's second result, one line per forecast reduced-NFE variant over the 2 multistep solvers at 4 steps
    assert re.search(r"- reduced NFE M=2, x̂₀ taylor1: within 0.5 dB of S/2 steps \(or above\) in [0-2] of 2 "
                     r"multistep settings; worst (dpmpp|unipc) 4 steps, [+-][0-9.]+ dB\.", text)
    pngs = sorted(bench_dir.glob("quality-vs-latency-*.png"))
    assert len(pngs) == 4  # 2 models × PSNR vs latency and vs compute (FD-shapes needs 64 seeds: no FD plot)
    with Image.open(pngs[0]) as img:
        assert img.size == (1100, 640)
    assert (bench_dir / "quality-vs-latency-tiny-dit-psnr-vs-latency.html").read_text().count("<html") == 1
    # a hand-written reading between the markers survives a rewrite, after the summary; stale numbers do not
    from workbench.bench.report import NOTES_END, NOTES_START

    md.write_text(text.replace("## Summary", f"{NOTES_START}\nreading kept\n{NOTES_END}\n\n## Summary") + "| stale |\n")
    assert main(["bench", "report", "--from", str(bench_dir), "--out", str(md), "--json"]) == 0
    again = md.read_text()
    assert again.count("reading kept") == 1 and "| stale |" not in again
    assert again.index("## Summary") < again.index("reading kept") < again.index("## Quality vs latency")


def test_overhead_suite_small():
    r = bench_overhead(small=True)
    rec = r["record_overhead"]["models"]["tiny-unet"]
    assert r["steps"] == 6 and rec["stats"]["store_bytes"] < rec["full"]["store_bytes"]
    assert r["analysis"]["median_s"] > 0 and r["app_startup"] == {"skipped": "small run"}
    assert finite(r)


def test_bench_errors_are_one_line(capsys):
    assert main(["bench", "report", "--out", "x.md"]) == 2
    assert "needs --from DIR" in capsys.readouterr().err
    assert main(["bench", "nonsense"]) == 2
    assert "unknown suite 'nonsense'" in capsys.readouterr().err
    assert main(["bench", "schedulers", "--small", "--schedulers", "dpmpp,heun"]) == 2
    err = capsys.readouterr().err
    assert "--schedulers: unknown scheduler 'heun'" in err and len(err.strip().splitlines()) == 1
    # an option the suite would not read is refused, not ignored (--device cuda on a suite that never moves)
    assert main(["bench", "engine-quality", "--device", "cpu", "--seeds", "2"]) == 2
    err = capsys.readouterr().err
    assert "bench engine-quality does not take --device; it takes --json, --models, --out" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["bench", "report", "--from", "x", "--out", "x.md", "--repeats", "5", "--images", "8"]) == 2
    assert "bench report does not take --images, --repeats; it takes --json, --out, --from" in capsys.readouterr().err
    assert main(["bench", "all", "--out", "x", "--train-seeds", "0-3"]) == 2  # autofr's, not in all's four suites
    assert "bench all does not take --train-seeds" in capsys.readouterr().err


def test_a_stopped_gpu_run_keeps_the_finished_one_it_would_replace(tmp_path, monkeypatch, capsys):
    """``bench gpu-speed --out DIR`` checkpoints each finished part to ``gpu-speed.partial.json``: stopped, an earlier
    finished ``gpu-speed.json`` is as it was (the checkpoint used to overwrite it); finished, the run replaces it and
    the partial file goes."""
    import workbench.bench.engine as engine

    finished = tmp_path / "gpu-speed.json"
    finished.write_text('{"suite": "gpu-speed", "rows": ["earlier"]}\n')

    def stopped(checkpoint=None, **kwargs):
        checkpoint({"suite": "gpu-speed", "partial": True, "rows": ["part"]})
        raise KeyboardInterrupt

    def whole(checkpoint=None, **kwargs):
        checkpoint({"suite": "gpu-speed", "partial": True, "rows": ["part"]})
        return {"suite": "gpu-speed", "rows": ["new"]}

    monkeypatch.setattr(engine, "bench_gpu_speed", stopped)
    assert main(["bench", "gpu-speed", "--small", "--out", str(tmp_path), "--json"]) != 0
    assert json.loads(finished.read_text())["rows"] == ["earlier"]
    assert json.loads((tmp_path / "gpu-speed.partial.json").read_text())["rows"] == ["part"]
    from workbench.bench.report import load_reports

    assert [name for name, _ in load_reports(tmp_path)] == ["gpu-speed.json"]  # the partial one beside it: not read
    finished.rename(tmp_path / "earlier.txt")
    assert [name for name, _ in load_reports(tmp_path)] == ["gpu-speed.partial.json"]  # alone, it is what there is
    (tmp_path / "earlier.txt").rename(finished)
    monkeypatch.setattr(engine, "bench_gpu_speed", whole)
    assert main(["bench", "gpu-speed", "--small", "--out", str(tmp_path), "--json"]) == 0
    assert json.loads(finished.read_text())["rows"] == ["new"] and not (tmp_path / "gpu-speed.partial.json").exists()
