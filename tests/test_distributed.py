"""Running record / run / autofr under torchrun: 2 gloo processes on the CPU, through the real entry point
(``python -m torch.distributed.run --nproc_per_node 2 -m workbench ...``), against the same command in one process.

Tolerances: the ranks sample their seeds in smaller batches than one process does, and float32 convolutions on the
CPU do not give bit-identical results for different batch sizes (oneDNN blocks the batch differently): measured on
tiny-unet, images after 4 steps differ by up to 2.4e-5 between a batch of 4 and two batches of 2. Where the batches
are the same (``run --batch-size 8`` on 64 seeds: every pipeline call holds the same 8 seeds in both) the results
are asserted equal exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench import distributed
from workbench.cli import main
from workbench.record.store import FeatureStore, list_runs

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = "down_blocks.0.resnets.0,mid_block.attentions.0,up_blocks.1.resnets.0"


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "FRDIFF_DIST_TIMEOUT_S": "120"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "workbench",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def single(capsys, *args: str) -> dict:
    """The command in this process, on one thread like each torchrun rank (kernels differ with the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        assert main(list(args)) == 0
        return json.loads(capsys.readouterr().out)
    finally:
        torch.set_num_threads(threads)


def test_shard_bounds_cover_the_seeds_in_order():
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            bounds = [distributed.shard_bounds(n, r, world) for r in range(world)]
            assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
    assert distributed.shard_bounds(5, 0, 2) == (0, 3) and distributed.shard_bounds(5, 1, 2) == (3, 5)


def test_sharded_record_equals_single_process_record(tmp_path, capsys):
    from workbench.analysis.reading import read_maps, read_stats

    # float32 maps (--reduce full): in float16 a 1e-5 difference can round to one half-precision step apart
    proc = torchrun("record", "--steps", "4", "--seed", "0-4", "--blocks", BLOCKS, "--reduce", "full", "--json",
                    "--out", "sharded", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # one JSON object: rank 0's
    assert report["complete"] is True and report["steps"] == 4 and report["blocks"] == 3
    single(capsys, "record", "--steps", "4", "--seed", "0-4", "--blocks", BLOCKS, "--reduce", "full", "--json",
           "--out", str(tmp_path / "single"))
    a, b = FeatureStore.open(tmp_path / "single"), FeatureStore.open(tmp_path / "sharded")
    assert [p.manifest["seeds"] for p in b.parts] == [[0, 1, 2], [3, 4]]
    assert b.complete and b.steps_done == a.steps_done == 4
    for key in ("seeds", "conditions", "timesteps", "recorded_timesteps", "blocks", "cfg", "steps", "reduction"):
        assert b.manifest[key] == a.manifest[key], key
    for block in a.blocks:
        for cond in (True, False, None):
            np.testing.assert_allclose(b.features(block, cond), a.features(block, cond), rtol=1e-4, atol=1e-4)
            for k, v in a.stats(block, cond).items():
                np.testing.assert_allclose(b.stats(block, cond)[k], v, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(read_maps(b, block, False), b.features(block, False))  # the fast reader too
        np.testing.assert_array_equal(read_maps(b, block, None), b.features(block, None))
    np.testing.assert_array_equal(read_stats(b, True)["rel_l1"][:, 1], b.stats(a.blocks[1], True)["rel_l1"])
    np.testing.assert_allclose(b.denoiser_output(None), a.denoiser_output(None), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.latents(), a.latents(), rtol=1e-4, atol=1e-4)
    assert b.latents().shape[1] == 5 and b.denoiser_output(None).shape[1] == 10
    # each part is a run of its own seeds; the listing shows the joined run once, not its parts
    np.testing.assert_array_equal(b.parts[1].latents(), b.latents()[:, 3:])
    rows = {Path(r["path"]).name: r for r in list_runs(tmp_path)}
    assert set(rows) == {"single", "sharded"} and rows["sharded"]["status"] == "complete"


def test_run_gathers_metrics_equal_to_single_process(tmp_path, capsys):
    args = ("run", "--preset", "uniform", "--steps", "2", "--seeds", "0-63", "--batch-size", "8", "--json")
    proc = torchrun(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    one = single(capsys, *args)
    # the same pipeline calls (8 seeds each) on either side: the images are identical, so the metrics computed
    # from them image by image are too; FD-shapes goes through the classifier's batched matrix products and sqrtm,
    # whose last bits depend on the thread count (one per rank here, two in this process): equal to 1e-9 only
    for key in ("psnr", "ssim", "max_abs_diff", "class_accuracy", "reference_class_accuracy", "predicted_speedup",
                "denoiser_calls", "n"):
        assert two[key] == one[key], key
    for key in ("fd_shapes", "reference_fd_shapes"):
        assert two[key] == pytest.approx(one[key], rel=1e-9), key
    assert two["n"] == 64 and two["ranks"] == 2 and "ranks" not in one
    assert len(two["latency_per_rank_s"]) == 2 and two["latency_s"] == max(two["latency_per_rank_s"])


def test_run_with_prompts_shards_them_like_seeds(tmp_path, capsys):
    """A text-to-image pipeline under torchrun: image i gets seed i and prompt i mod P on whichever rank samples it,
    so the gathered metrics equal one process's (4 seeds a rank: the same batches of 2 on either side)."""
    args = ("run", "--model", "tiny-sd", "--preset", "uniform", "--steps", "2", "--seeds", "0-7", "--batch-size",
            "2", "--prompt", "a red star at the top left on a blue background",
            "--prompt", "a white ring at the center on a black background",
            "--prompt", "a green square at the bottom right on a yellow background", "--json")
    proc = torchrun(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    one = single(capsys, *args)
    for key in ("psnr", "ssim", "max_abs_diff", "class_accuracy", "reference_class_accuracy", "denoiser_calls", "n"):
        assert two[key] == one[key], key
    assert two["n"] == 8 and two["ranks"] == 2


def test_ddp_autofr_equals_single_process_autofr(tmp_path, capsys):
    args = ("autofr", "--steps", "6", "--train-seeds", "0-7", "--iterations", "3", "--batch-size", "4", "--lr", "0.2",
            "--no-measure", "--quiet", "--json")
    proc = torchrun(*args, "--out", "ddp.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    one = single(capsys, *args, "--out", str(tmp_path / "single.json"))
    assert two["ranks"] == 2
    assert len(two["loss_curve"]) == len(one["loss_curve"]) == 3
    # each rank samples 2 of the 4 images of an iteration (batch composition: see the module docstring)
    for a, b in zip(one["loss_curve"], two["loss_curve"], strict=True):
        assert b["mse"] == pytest.approx(a["mse"], rel=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
        assert b["mu"] == pytest.approx(a["mu"], rel=1e-4)
        assert b["compute_fraction"] == a["compute_fraction"]
    assert two["step_mask"] == one["step_mask"] and two["compute_fraction"] == one["compute_fraction"]
    p1, p2 = json.loads((tmp_path / "single.json").read_text()), json.loads((tmp_path / "ddp.json").read_text())
    assert p2["blocks"] == p1["blocks"]  # every block's keyframes


def test_a_failing_rank_stops_the_job_and_leaves_the_rest_readable(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "part-00001").write_text("not a folder")  # rank 1 cannot create its part
    proc = torchrun("record", "--steps", "4", "--seed", "0-3", "--blocks", BLOCKS, "--out", "run", cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "rank 1 of 2" in errors[0] and "part-00001" in errors[0] and "incomplete" in errors[0]
    store = FeatureStore.open(out)
    assert not store.complete
    assert store.manifest["failed"][0]["rank"] == 1
    assert store.manifest["seeds"] == [0, 1] and store.manifest["missing_seeds"] == [2, 3]
    assert store.steps_done == 4 and store.latents().shape[:2] == (4, 2)
    np.testing.assert_array_equal(store.features(store.blocks[0]), store.parts[0].features(store.blocks[0]))
    assert [r["status"] for r in list_runs(tmp_path)] == ["incomplete"]


def test_run_throughput_suite_reports_images_per_second_of_both_variants():
    from workbench.bench.throughput import bench_run_throughput

    report = bench_run_throughput(small=True, seeds=3, steps=2, batch_size=2)
    assert report["processes"] == 1 and report["images"] == report["images_per_rank"] == 3
    assert set(report["variants"]) == {"none", "uniform M=2"}
    for row in report["variants"].values():
        assert row["images_per_s"] == pytest.approx(3 / row["seconds"])
        assert 0 < row["sampling_s_per_rank"][0] <= row["seconds"]
