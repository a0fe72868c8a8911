"""Predictability analysis (issue 18): the error of predicting a step's feature from earlier computed steps by hold
and by forecasts, against manual computations, and its figures."""

import numpy as np
import pytest

from workbench import figures
from workbench.analysis.predictability import policy_error, predictability, store_predictability, summary


def _linear(steps=8, batch=2, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(batch, dim)) + 3, rng.normal(size=(batch, dim))
    return np.stack([a + b * s for s in range(steps)]), a, b


def test_hold_at_interval_one_is_the_change_to_the_previous_step():
    maps, _, _ = _linear()
    err = predictability(maps, modes=("hold",), intervals=(1,))["error"][0, 0]
    manual = np.abs(maps[:-1] - maps[1:]).sum(-1) / np.abs(maps[1:]).sum(-1)
    assert np.isnan(err[0]).all()
    np.testing.assert_allclose(err[1:], manual, rtol=1e-5)


def test_forecasts_are_exact_for_features_of_their_order():
    maps, _, _ = _linear(steps=10)
    res = predictability(maps)
    err = res["error"]  # [modes, intervals, steps, batch]
    assert res["modes"] == ["hold", "taylor1", "taylor2"] and res["intervals"] == [1, 2, 3, 4]
    hold, t1 = err[0], err[1]
    for b, m in enumerate(res["intervals"]):
        assert np.isnan(t1[b, :m]).all()
        assert np.nanmax(t1[b, 2 * m:]) < 1e-5  # two points back exist from step 2M on: the line is exact
        assert np.nanmin(hold[b, m:]) > 1e-3
    rng = np.random.default_rng(1)
    c = rng.normal(size=(3, 1, 4))
    quad = np.stack([c[0] + 5 + c[1] * s + c[2] * s * s for s in range(9)])
    e = predictability(quad, intervals=(2,))["error"]
    assert np.nanmax(e[2, 0, 6:]) < 1e-4 and np.nanmin(e[1, 0, 6:]) > 1e-3


def test_policy_error_follows_the_keyframes():
    maps, a, b = _linear(steps=6)
    mask = [True, False, True, False, True, False]
    t1 = policy_error(maps, mask, "taylor1")
    assert (t1[[0, 2, 4]] == 0).all()  # keyframes are computed
    manual_step1 = np.abs(maps[0] - maps[1]).sum(-1) / np.abs(maps[1]).sum(-1)  # one keyframe behind: hold
    np.testing.assert_allclose(t1[1], manual_step1, rtol=1e-5)
    assert t1[[3, 5]].max() < 1e-5
    with pytest.raises(ValueError, match="step 0 must be a keyframe"):
        policy_error(maps, [False] * 6, "hold")


@pytest.fixture(scope="module")
def pool16_run(tmp_path_factory, dit_pipe):
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore

    out = record_run(dit_pipe, "tiny-dit", tmp_path_factory.mktemp("pool16") / "r", labels=[0, 3], seeds=[0, 1],
                     steps=8, reduction="pool16")
    return FeatureStore.open(out)


def test_store_predictability_reads_every_block(pool16_run):
    res = store_predictability(pool16_run)
    assert res["error"].shape == (len(pool16_run.blocks), 3, 4, pool16_run.steps_done)
    s = summary(res)
    block = pool16_run.blocks[0]
    means = s["blocks"][block]["mean_error"]
    assert set(means) == {"hold", "taylor1", "taylor2"} and set(means["hold"]) == {"1", "2", "3", "4"}
    assert means["hold"]["2"] > means["hold"]["1"] > 0  # farther back is worse for hold
    assert s["blocks"][block]["best_mode"]["1"] in ("hold", "taylor1", "taylor2")


def test_predictability_figures_start_at_zero_and_label_the_data():
    ts = [999, 799, 599, 399]
    err = np.array([[np.nan, 0.2, 0.1, 0.05], [np.nan, 0.4, 0.3, 0.2]])
    fig = figures.predictability_heatmap(err, ["a", "b"], ts, "taylor1", 1)
    assert fig.data[0].zmin == 0 and fig.data[0].zmax == pytest.approx(0.4)
    assert fig.data[0].colorbar.title.text == "relative error" and "taylor1" in fig.layout.title.text
    curves = figures.predictability_curves({"hold": err[0], "taylor1": err[1]}, ts, "a", 2)
    assert [d.name for d in curves.data] == ["hold", "taylor1"] and curves.layout.yaxis.type == "log"
