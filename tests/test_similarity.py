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
    from workbench.recorder import record_run
    from workbench.store import FeatureStore

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
