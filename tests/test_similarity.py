import numpy as np
import pytest

from workbench.analysis.similarity import (
    adjacent_similarity,
    keyframes_for_threshold,
    similarity_matrix,
    summarize_block,
    summarize_store,
)


def test_identical_maps_are_fully_similar():
    maps = np.repeat(np.random.default_rng(0).normal(size=(1, 3, 4, 5, 5)), 6, axis=0)
    adj = adjacent_similarity(maps)
    assert np.isnan(adj["cosine"][0]).all()
    np.testing.assert_allclose(adj["cosine"][1:], 1.0, atol=1e-6)
    np.testing.assert_allclose(adj["rel_l1"][1:], 0.0, atol=1e-6)
    np.testing.assert_allclose(similarity_matrix(maps), 1.0, atol=1e-6)
    np.testing.assert_allclose(similarity_matrix(maps, "rel_l1"), 0.0, atol=1e-6)


def test_hand_computed_values():
    # Step 1 = 2 × step 0 (cosine 1, rel-L1 1); step 2 = −step 1 (cosine −1, rel-L1 2).
    base = np.array([1.0, -2.0, 3.0])
    maps = np.stack([base, 2 * base, -2 * base])[:, None, :]
    adj = adjacent_similarity(maps)
    np.testing.assert_allclose(adj["cosine"][1:, 0], [1.0, -1.0], rtol=1e-6)  # float32 arithmetic
    np.testing.assert_allclose(adj["rel_l1"][1:, 0], [1.0, 2.0], rtol=1e-6)
    rel = similarity_matrix(maps, "rel_l1")[0]
    assert rel[0, 2] == pytest.approx(np.abs(base + 2 * base).sum() / np.abs(-2 * base).sum(), rel=1e-6)


def test_matrices_match_plain_numpy_on_random_data():
    maps = np.random.default_rng(1).normal(size=(7, 2, 3, 4, 4))
    flat = maps.reshape(7, 2, -1)
    cos = similarity_matrix(maps)
    rel = similarity_matrix(maps, "rel_l1")
    for b in range(2):
        for s in range(7):
            for t in range(7):
                a, c = flat[s, b], flat[t, b]
                # float32 arithmetic against a float64 reference
                assert cos[b, s, t] == pytest.approx(a @ c / np.linalg.norm(a) / np.linalg.norm(c), abs=1e-5)
                assert rel[b, s, t] == pytest.approx(np.abs(a - c).sum() / np.abs(c).sum(), rel=1e-5)
    adj = adjacent_similarity(maps)
    np.testing.assert_allclose(adj["cosine"][1:, 1], [cos[1, s, s - 1] for s in range(1, 7)], atol=1e-5)
    with pytest.raises(ValueError, match="unknown metric"):
        similarity_matrix(maps, "l2")


def test_keyframes_threshold_rule():
    rel = np.array([np.nan, 0.05, 0.05, 0.05, 0.3, 0.01, 0.01])
    # accumulated: 0.05, 0.10, 0.15 > 0.12 → key at 3; 0.3 > 0.12 → key at 4; 0.01, 0.02 → none.
    assert keyframes_for_threshold(rel, 0.12) == [0, 3, 4]
    assert keyframes_for_threshold(rel, 10.0) == [0]
    assert keyframes_for_threshold(rel, 0.0) == list(range(7))
    summary = summarize_block(np.full((7, 2), 0.9), np.tile(rel[:, None], (1, 2)), 0.12)
    assert summary["keyframes"] == 3 and summary["mean_adjacent_cosine"] == pytest.approx(0.9)
    assert summary["mean_adjacent_rel_l1"] == pytest.approx(np.nanmean(rel)) and summary["cosine_spread"] == 0


def test_summarize_a_recorded_run(tmp_path, random_dit_pipe):
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore

    out = record_run(random_dit_pipe, "dit", tmp_path / "r", labels=[0, 3], steps=5, reduction="full")
    store = FeatureStore.open(out)
    report = summarize_store(store, threshold=0.2)
    assert report["steps"] == 5 and [b["name"] for b in report["blocks"]] == store.blocks
    # Streaming statistics and statistics recomputed from the stored maps agree.
    block = store.blocks[2]
    adj = adjacent_similarity(store.features(block))
    row = next(b for b in report["blocks"] if b["name"] == block)
    assert row["mean_adjacent_cosine"] == pytest.approx(np.nanmean(adj["cosine"]), rel=1e-4)
    assert row["mean_adjacent_rel_l1"] == pytest.approx(np.nanmean(adj["rel_l1"]), rel=1e-4)


def test_block_similarity_matches_plain_numpy_and_is_consistent():
    from workbench.analysis.similarity import block_similarity

    maps = np.random.default_rng(4).normal(size=(6, 3, 2, 4, 4)).astype(np.float32)
    flat = maps.reshape(6, 3, -1).astype(np.float64)
    out = block_similarity(maps)
    for b in range(3):
        for s in range(6):
            for t in range(6):
                a, c = flat[s, b], flat[t, b]
                assert out["cosine_matrix"][b, s, t] == pytest.approx(
                    a @ c / np.linalg.norm(a) / np.linalg.norm(c), abs=1e-5)
                assert out["rel_l1_matrix"][b, s, t] == pytest.approx(np.abs(a - c).sum() / np.abs(c).sum(),
                                                                      rel=1e-5, abs=1e-7)
    ref = adjacent_similarity(maps)
    np.testing.assert_allclose(out["cosine"], ref["cosine"], atol=1e-6)
    np.testing.assert_allclose(out["rel_l1"], ref["rel_l1"], rtol=1e-6)
    np.testing.assert_allclose(out["rel_l1_matrix"], similarity_matrix(maps, "rel_l1"), rtol=1e-6)
    # Identical steps: cosine 1, rel-L1 0, everywhere.
    same = block_similarity(np.repeat(maps[:1], 4, axis=0))
    np.testing.assert_allclose(same["cosine_matrix"], 1.0, atol=1e-6)
    assert np.all(same["rel_l1_matrix"] == 0) and np.isnan(same["rel_l1"][0]).all()


def test_sample_spread_hand_values():
    from workbench.analysis.similarity import sample_spread

    cos = np.array([[np.nan, np.nan], [0.9, 0.7], [1.0, 0.8]])
    rel = np.array([[np.nan, np.nan], [0.1, 0.3], [0.0, 0.0]])
    out = sample_spread(cos, rel)
    np.testing.assert_allclose(out["adjacent_cosine_mean"][1:], [0.8, 0.9])
    np.testing.assert_allclose(out["adjacent_cosine_std"][1:], [0.1, 0.1])
    np.testing.assert_allclose(out["per_sample_mean_adjacent_cosine"], [0.95, 0.75])
    assert out["mean_adjacent_cosine_std"] == pytest.approx(0.1)
    np.testing.assert_allclose(out["adjacent_rel_l1_std"][1:], [0.1, 0.0])
    assert out["mean_adjacent_rel_l1_std"] == pytest.approx(0.05)
    assert np.isnan(out["adjacent_cosine_mean"][0])
    one = sample_spread(cos[:, :1], rel[:, :1])  # one sample: no spread
    assert one["mean_adjacent_cosine_std"] == 0


@pytest.fixture(scope="module")
def dit_full_run(tmp_path_factory, random_dit_pipe):
    from workbench.record.recorder import record_run

    return record_run(random_dit_pipe, "dit", tmp_path_factory.mktemp("full") / "r", labels=[0, 3, 5],
                      seeds=[0, 1, 2], steps=4, reduction="full")


def test_reader_returns_what_the_store_returns(dit_full_run):
    from workbench.analysis.reading import iter_maps, read_maps, read_stats
    from workbench.record.store import FeatureStore, StoreError

    store = FeatureStore.open(dit_full_run)
    for layout in ("uncond_first", "cond_first"):
        store.manifest["cfg"]["layout"] = layout
        for cond in (True, False, None):
            block = store.blocks[1]
            np.testing.assert_array_equal(read_maps(store, block, cond), store.features(block, cond))
            stats = read_stats(store, cond)
            for i, block in enumerate(store.blocks):
                np.testing.assert_array_equal(stats["cosine"][:, i], store.stats(block, cond)["cosine"])
                np.testing.assert_array_equal(stats["rel_l1"][:, i], store.stats(block, cond)["rel_l1"])
    store.manifest["cfg"]["layout"] = "uncond_first"
    assert [name for name, _ in iter_maps(store, prefetch=1)] == store.blocks
    # The recorder's uncompressed chunks are read straight from their files (no zarr fallback).
    import zarr

    from workbench.analysis.reading import _chunk_files
    from workbench.record.store import ARRAYS

    folder = store.directory / ARRAYS / "features" / "1"
    assert _chunk_files(zarr.open_array(str(folder), mode="r"), folder, 4, slice(3, None)) is not None
    with pytest.raises(StoreError, match="not recorded"):
        read_maps(store, "nope")


def test_analyze_maps_matches_per_block_computation(dit_full_run):
    from workbench.analysis.frequency import spectra_over_time
    from workbench.analysis.similarity import analyze_maps
    from workbench.record.store import FeatureStore

    store = FeatureStore.open(dit_full_run)
    result = analyze_maps(store)
    assert list(result) == store.blocks
    for block in store.blocks:
        maps = store.features(block)
        np.testing.assert_allclose(result[block]["rel_l1_matrix"], similarity_matrix(maps, "rel_l1"), rtol=1e-5)
        np.testing.assert_allclose(result[block]["cosine_matrix"], similarity_matrix(maps), atol=1e-5)
        np.testing.assert_allclose(result[block]["spectra"], spectra_over_time(maps), rtol=1e-5)
        # The stored maps are the full outputs: their adjacent values are the streaming statistics.
        np.testing.assert_allclose(result[block]["rel_l1"][1:], store.stats(block)["rel_l1"][1:], rtol=1e-4)


def _numpy_radial(img):
    """Plain-numpy reference: full 2-D FFT power, averaged per integer radius (explicit loops)."""
    h, w = img.shape
    power = np.abs(np.fft.fft2(img)) ** 2 / (h * w)
    sums, counts = np.zeros(h // 2 + 1), np.zeros(h // 2 + 1)
    for y in range(h):
        for x in range(w):
            r = int(np.rint(np.hypot(min(y, h - y), min(x, w - x))))
            if r <= h // 2:
                sums[r] += power[y, x]
                counts[r] += 1
    return sums / counts


def test_analyze_store_report_on_full_and_stats_runs(dit_full_run, tmp_path, random_dit_pipe):
    import json

    from workbench.analysis.report import analyze_store
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore

    store = FeatureStore.open(dit_full_run)
    report = analyze_store(store, threshold=0.2)
    json.dumps(report, allow_nan=False)  # strict JSON: NaN became None
    assert report["steps"] == 4 and report["samples"] == 3 and report["notes"] == []
    block = store.blocks[2]
    row = next(b for b in report["blocks"] if b["name"] == block)
    stats = store.stats(block)
    cos = stats["cosine"].astype(np.float64)
    assert row["mean_adjacent_cosine"] == pytest.approx(cos[1:].mean())
    assert row["spread"]["adjacent_cosine_std"][0] is None
    np.testing.assert_allclose(row["spread"]["adjacent_cosine_std"][1:], cos[1:].std(1))
    np.testing.assert_allclose(row["spread"]["per_sample_mean_adjacent_rel_l1"], stats["rel_l1"][1:].mean(0),
                               rtol=1e-6)
    # Feature band energy from a plain-numpy spectrum of the stored maps (channel and sample mean per step).
    maps = store.features(block).astype(np.float64)
    ref = np.array([np.mean([_numpy_radial(m) for m in step.reshape(-1, *maps.shape[-2:])], 0) for step in maps])
    n = ref.shape[1] - 1
    r = np.arange(1, n + 1) / n
    high = ref[:, 1:][:, r > 2 / 3].sum(1) / ref[:, 1:].sum(1)
    np.testing.assert_allclose(row["feature_bands"]["high"], high, rtol=1e-4)
    bands = report["frequency"]["predicted_x0"]["bands"]
    np.testing.assert_allclose(np.add(np.add(bands["low"], bands["mid"]), bands["high"]), 1.0, rtol=1e-6)
    assert report["frequency"]["final"]["space"] == "pixel"

    run = record_run(random_dit_pipe, "dit", tmp_path / "s", labels=[0, 3], steps=3, reduction="stats")
    stats_report = analyze_store(FeatureStore.open(run))
    json.dumps(stats_report, allow_nan=False)
    assert all(b["feature_bands"] is None for b in stats_report["blocks"])
    assert stats_report["sources"]["feature_spectra"] is None and "stores no feature maps" in stats_report["notes"][0]
    assert len(stats_report["frequency"]["predicted_x0"]["bands"]["low"]) == 3
    assert stats_report["blocks"][0]["spread"]["mean_adjacent_cosine_std"] >= 0


def test_analyze_command_text_and_json(dit_full_run, capsys):
    import json

    from workbench.cli import main

    assert main(["analyze", str(dit_full_run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 4 and len(report["blocks"]) == 6
    keys = {"name", "mean_adjacent_cosine", "mean_adjacent_rel_l1", "spread", "feature_bands"}
    assert keys <= set(report["blocks"][0])
    assert set(report["frequency"]) == {"band_edges", "predicted_x0", "final"}
    assert main(["analyze", str(dit_full_run)]) == 0
    text = capsys.readouterr().out
    assert "± spread" in text and "predicted x0" in text and "final pixel sample" in text


def test_chunk_file_reader_matches_zarr_and_falls_back(tmp_path):
    import zarr

    from workbench.analysis.reading import _chunk_files

    data = np.random.default_rng(8).normal(size=(4, 6, 2, 3, 3)).astype(np.float32)
    raw = zarr.create_array(str(tmp_path / "raw"), shape=data.shape, chunks=(1, 3, 2, 3, 3), dtype="float32",
                            compressors=None, fill_value=-7.0)
    raw[:3] = data[:3]  # step 3 is never written: its chunk files are missing
    for half in (slice(0, 3), slice(3, None), slice(None)):
        got = _chunk_files(raw, tmp_path / "raw", 4, half)
        np.testing.assert_array_equal(got, raw[:4, half])
    assert np.all(_chunk_files(raw, tmp_path / "raw", 4, slice(0, 3))[3] == -7.0)
    assert _chunk_files(raw, tmp_path / "raw", 4, slice(1, 4)) is None  # half not on chunk boundaries
    packed = zarr.create_array(str(tmp_path / "packed"), shape=data.shape, chunks=(1, 3, 2, 3, 3), dtype="float32")
    packed[:] = data
    assert _chunk_files(packed, tmp_path / "packed", 4, slice(0, 3)) is None  # compressed: zarr reads it
