"""Smoke tests of the benchmark suites at tiny size (the numbers themselves come from the commands, not tests)."""

from workbench.bench.foundation import bench_analysis, bench_record_overhead


def test_record_overhead_suite_runs_small():
    report = bench_record_overhead(repeats=1, steps=2)
    for row in report["models"].values():
        assert row["no_hooks_s"] > 0 and len(row["stats"]["paired_ratios"]) == 1
        assert row["stats"]["store_bytes"] < row["pool16"]["store_bytes"] < row["full"]["store_bytes"]


def test_analysis_suite_runs_small():
    report = bench_analysis(repeats=1, steps=2)
    assert report["blocks"] == 18 and report["median_s"] > 0 and report["store_bytes"] > 0
    assert set(report["parts_median_s"]) == {"read_s", "similarity_s", "spectra_s", "report_s"}
    assert report["maps_bytes_read"] * 2 < report["store_bytes"]  # one CFG half of the maps is read


def test_machine_info_names_the_shipped_weights():
    import hashlib

    from workbench.bench.common import machine_info
    from workbench.models.zoo import MODELS_DIR

    weights = machine_info()["weights"]
    assert set(weights) >= {"tiny-unet", "tiny-dit", "shape-classifier"}
    dit = MODELS_DIR / "tiny-dit" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights["tiny-dit"] == hashlib.sha256(dit.read_bytes()).hexdigest()[:16]
    assert len(set(weights.values())) == len(weights)  # different models, different digests
