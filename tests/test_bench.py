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


def test_foundation_interleaves_the_models(monkeypatch):
    """Every model warms up once, then each round times every model once, in catalogue order."""
    from types import SimpleNamespace

    import workbench.bench.foundation as foundation
    import workbench.bench.methods as methods
    import workbench.models.zoo as zoo

    calls = []

    def fake_pipeline(name, device="cpu"):
        def pipe(conditions, num_inference_steps, generator):
            calls.append(name)
        pipe.config = SimpleNamespace(default_guidance_scale={"a": 2.0}.get(name, 7.5))
        return pipe

    monkeypatch.setattr(zoo, "EMBEDDED", ("a", "b"))
    monkeypatch.setattr(zoo, "load_pipeline", fake_pipeline)
    monkeypatch.setattr(methods, "seed_conditions", lambda pipe, seeds: seeds)
    monkeypatch.setattr(foundation, "make_shapes", lambda n, seed: None)
    report = foundation.bench_foundation(repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert report["interleaved"] and [len(m["runs_s"]) for m in report["models"].values()] == [3, 3]
    assert report["models"]["a"]["guidance_scale"] == 2.0 and report["models"]["b"]["guidance_scale"] == 7.5
