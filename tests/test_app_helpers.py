"""The app's pure helpers (workbench.app.policy, workbench.app.runs): values, not just "no exception"."""

import json

import numpy as np
import pytest
import torch

import frdiff
from frdiff import PolicyError
from workbench.app import policy as app_policy
from workbench.app import runs as app_runs
from workbench.compare import Cancelled


@pytest.fixture
def policy(random_unet_pipe):
    return frdiff.make_preset("uniform", random_unet_pipe.unet, 6, interval=3)


def test_grid_round_trip_and_row_column_edits(policy):
    frame = app_policy.mask_frame(policy)
    assert frame.shape == (18, 6) and list(frame.columns) == ["0", "1", "2", "3", "4", "5"]
    assert torch.equal(app_policy.frame_mask(frame), policy.keyframes)
    mask = app_policy.set_blocks(policy.keyframes, [0], keyframe=False)
    assert mask[0].tolist() == [True, False, False, False, False, False]  # step 0 stays a keyframe
    mask = app_policy.set_blocks(mask, [1], keyframe=False, every=2)
    assert mask[1].tolist() == [True, False, True, False, True, False]
    mask = app_policy.set_steps(mask, [0, 4], keyframe=False)
    assert mask[:, 0].all() and not mask[:, 4].any()
    edited = app_policy.with_mask(policy, mask)
    assert edited.provenance == {"made_by": "builder", "source": policy.provenance}
    assert app_policy.with_mask(policy, policy.keyframes).provenance == policy.provenance


def test_summary_and_problems(policy, random_unet_pipe):
    s = app_policy.summary(policy)
    assert (s["full_steps"], s["fr_steps"], s["skipped_steps"], s["denoiser_calls"]) == (2, 4, 0, 6)
    assert app_policy.problems_for(policy, random_unet_pipe.unet) == []
    bad = app_policy.with_mask(policy, torch.zeros_like(policy.keyframes))
    assert any("step 0 must be a keyframe" in p for p in app_policy.problems_for(bad, random_unet_pipe.unet))
    dit = frdiff.make_preset("uniform", frdiff.denoiser_of(random_unet_pipe), 6)
    assert app_policy.problems_for(dit, random_unet_pipe.unet) == []


def test_library_save_list_metrics_delete(policy, tmp_path):
    path = app_policy.save_policy(policy, tmp_path, "my policy/../x")
    assert path == tmp_path / "my-policy-..-x.json"
    with pytest.raises(ValueError, match="already in the library; pick another name or tick 'overwrite'"):
        app_policy.save_policy(policy, tmp_path, "my policy/../x")
    (tmp_path / "junk.json").write_text('{"format": "nope"}')
    for overwrite in (False, True):  # a file that is not a policy is never replaced
        with pytest.raises(ValueError, match="junk.json in the library is not a policy file; pick another name"):
            app_policy.save_policy(policy, tmp_path, "junk", overwrite=overwrite)
    assert (tmp_path / "junk.json").read_text() == '{"format": "nope"}'
    rows = {r["name"]: r for r in app_policy.list_policies(tmp_path)}
    good = rows[path.stem]
    assert (good["steps"], good["made_by"], good["preset"], good["denoiser_calls"]) == (6, "preset", "uniform", 6)
    assert "not an FRDiff policy" in rows["junk"]["problems"]
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "my_note": "keep me"}))  # a key this version does not know
    app_policy.store_metrics(path, {"psnr": 31.5, "speedup": 1.4, "images": "dropped"})
    stored = json.loads(path.read_text())
    assert stored["provenance"]["metrics"] == {"psnr": 31.5, "speedup": 1.4} and stored["my_note"] == "keep me"
    app_policy.delete_policy(tmp_path, path.stem)
    assert not path.exists()
    with pytest.raises(ValueError):
        app_policy.safe_name("  /// ")
    # letters of any script stay (they were dropped: "café" saved as "caf", "вариант" refused); separators do not
    assert app_policy.safe_name("café 2") == "café-2" and app_policy.safe_name("вариант") == "вариант"
    assert app_policy.safe_name("cafe\u0301") == "caf\u00e9"  # a combining accent, normalised
    assert app_policy.safe_name("../a/b\\c:d") == "a-b-c-d"


def test_upload_errors_are_listed(policy):
    assert app_policy.load_upload(policy.to_json().encode()).steps == 6
    with pytest.raises(PolicyError, match="not valid JSON"):
        app_policy.load_upload(b"{oops")
    with pytest.raises(PolicyError, match="UTF-8"):
        app_policy.load_upload(b"\xff\xfe\x00")


def test_attribution_variants_recompute_one_group_each(policy):
    groups = app_runs.reused_groups(policy)
    assert list(groups) == ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block", "up_blocks.0",
                            "up_blocks.1", "up_blocks.2"]  # the order they run in
    variants = app_runs.attribution_variants(policy, "p")
    assert variants[0].policy is policy and len(variants) == 8
    mid = next(v for v in variants if v.name == "mid_block recomputed").policy
    rows = groups["mid_block"]
    assert mid.keyframes[rows].all() and torch.equal(mid.keyframes[:rows[0]], policy.keyframes[:rows[0]])
    result = {"variants": [{"name": "p", "psnr": 30.0, "ssim": 0.9, "predicted_speedup": 1.5},
                           {"name": "mid_block recomputed", "psnr": 33.0, "ssim": 0.95, "predicted_speedup": 1.3}]}
    row = app_runs.attribution_rows(result, "p")[0]
    assert row["group"] == "mid_block" and row["psnr_gain_db"] == pytest.approx(3.0)
    assert row["speedup_given_up"] == pytest.approx(0.2)


def test_parsing_helpers(random_unet_pipe):
    assert app_runs.parse_steps_list("10, 5 3") == [10, 5, 3]
    with pytest.raises(ValueError, match="'x'"):
        app_runs.parse_steps_list("10, x")
    v = app_runs.preset_variants(random_unet_pipe, ["uniform M=3 + mixing", "reduced-nfe M=2"], 6)
    assert v[0].policy.mixing.enabled and v[0].policy.keyframes[0].tolist() == [True, False, False, True, False, False]
    assert v[1].policy.step_kinds().count("skip") == 3
    assert app_runs.evenly(4, 6) == [0, 1, 2, 3] and app_runs.evenly(50, 3) == [0, 24, 49]
    assert app_runs.enlarge(np.zeros((32, 32, 3)), 256).shape == (256, 256, 3)
    assert app_runs.block_group("transformer_blocks.3") == "transformer_blocks.3"
    assert app_runs.block_group("up_blocks.1.attentions.0") == "up_blocks.1"


def test_watching_x0_ends_at_the_image_and_leaves_no_hooks(random_unet_pipe):
    den = random_unet_pipe.unet
    seen = []
    out = app_runs.sample_watching_x0(random_unet_pipe, 2, 0, steps=4, on_step=lambda s, n, f, t: seen.append((s, t)))
    assert out["x0"].shape == (4, 32, 32, 3) and [s for s, _ in seen] == [0, 1, 2, 3]
    assert out["timesteps"] == sorted(out["timesteps"], reverse=True)
    assert np.abs(out["x0"][-1] - out["image"]).mean() < 0.05  # the last x̂0 is (nearly) the sample
    assert not den._forward_hooks and frdiff.attached_hooks(random_unet_pipe) == []
    with pytest.raises(Cancelled):
        app_runs.sample_watching_x0(random_unet_pipe, 2, 0, steps=4, cancel=lambda: True)
    assert not den._forward_hooks


def test_plan_matches_recording_and_heatmap(random_unet_pipe, tmp_path):
    from workbench.record.store import FeatureStore

    plan = app_runs.plan_store(random_unet_pipe, [0], 3, "ddim", "pool16", labels=[1])
    out = app_runs.record(random_unet_pipe, "tiny-unet", tmp_path / "r", [0], 3, "ddim", "pool16", labels=[1])
    store = FeatureStore.open(out)
    assert store.manifest["estimate_bytes"] == plan["estimate_bytes"] and plan["blocks"] == 18
    values = app_runs.adjacent_values(store, "cosine")
    assert values.shape == (18, 3) and np.isnan(values[:, 0]).all() and (values[:, 1:] <= 1.0 + 1e-5).all()
    heat = app_runs.quick_heatmap(random_unet_pipe, "tiny-unet", 1, [0], steps=3)
    assert heat["cosine"].shape == (18, 3) and len(heat["timesteps"]) == 3
    np.testing.assert_allclose(heat["cosine"], values, rtol=1e-5)
    assert app_runs.run_folder(tmp_path, "/x/my model", "a star!", "1").name == "my-model-a-star-1"


def test_tour_reading_states_what_was_measured():
    """The Tour's sentences come from its numbers: the paper's frequency claim is said to hold only when it does."""
    from workbench.app import runs

    def result(fr_high, few_high):
        spectra = {runs.TOUR_FEWER: [4.0, 2.0, few_high], runs.TOUR_FR: [1.0, 1.0, fr_high],
                   runs.TOUR_FORECAST: [0.1] * 3}  # three bins: low = the first, high = the last
        variants = [{"name": runs.TOUR_FEWER, "psnr": 22.4, "steps": 15, "predicted_speedup": 2.0},
                    {"name": runs.TOUR_FR, "psnr": 22.6, "predicted_speedup": 1.6},
                    {"name": runs.TOUR_FORECAST, "psnr": 30.1, "predicted_speedup": 2.0}]
        return runs.tour_reading({"variants": variants, "error_spectra": spectra})

    holds = result(fr_high=0.5, few_high=1.25)
    assert holds[0].startswith("Closest to the full run: **forecast** 30.1 dB, **feature reuse** 22.6 dB")
    assert any("as the paper finds" in line and "errs 2.5× less than 15 steps" in line for line in holds)
    fails = result(fr_high=3.0, few_high=1.5)
    assert any("here it does not hold" in line and "2.0× as much as 15 steps" in line for line in fails)
    assert any("15 steps err most at low frequencies" in line for line in fails)
    assert any("+7.5 dB over plain feature reuse (better), at 0.50 of the full run's FLOPs against 0.62" in line
               for line in holds)


def test_autofr_chart_has_two_colours_a_target_line_and_fixed_compute_ticks():
    from workbench.app.autofr import progress_figure

    history = [{"iteration": i, "mse": 10.0 ** -i, "compute_fraction": 0.9 - 0.1 * i} for i in range(4)]
    fig = progress_figure(history, 0.6)
    colours = {d.line.color for d in fig.data}
    assert len(colours) == 2
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.exponentformat == "power"
    assert tuple(fig.layout.yaxis2.range) == (0, 1.05) and fig.layout.yaxis2.dtick == 0.2
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1 and lines[0].y0 == 0.6 == lines[0].y1


def test_tables_have_readable_headers_units_and_no_none():
    from workbench.app import runs

    result = {"reference": {"steps": 20, "denoiser_calls": 20, "class_accuracy": 1.0, "latency_s": 2.0},
              "variants": [{"name": "M=2", "steps": 20, "denoiser_calls": 10, "psnr": 31.234, "ssim": 0.98765,
                            "max_abs_diff": 0.1234, "class_accuracy": 1.0, "latency_s": 1.0, "speedup": 2.0,
                            "speedup_runs": [1.9, 2.0, 2.3], "predicted_speedup": 1.6}]}
    rows = runs.metrics_rows(result)
    assert list(rows[0]) == list(runs.TABLE_COLUMNS.values()) and "PSNR (dB)" in rows[0] and "latency (s)" in rows[0]
    assert rows[0]["PSNR (dB)"] == "–" and rows[0]["FD-shapes"] == "–"  # not None
    assert rows[1]["PSNR (dB)"] == 31.2 and rows[1]["SSIM"] == 0.988
    assert rows[1]["measured speedup"] == "2.00× (1.90–2.30 over 3 rounds)"
    note = runs.speedup_note(result["variants"][0])
    assert note.startswith("M=2: measured 2.00× is above the 1.60× FLOPs predict")
    assert runs.speedup_note({**result["variants"][0], "speedup": 1.65}) is None


def test_a_policy_for_another_model_has_counts_but_no_prediction(policy, random_unet_pipe):
    """The builder and Auto-FR pages summarise a policy against the current model's FLOP shares: one made for
    another model (opened from the library, sent from Auto-FR) gets its counts and no prediction, not a KeyError."""
    from workbench.app.runs import savings_of

    savings = savings_of(random_unet_pipe)
    assert "predicted_speedup" in app_policy.summary(policy, savings)
    other = policy.replaced(blocks=[f"elsewhere.{b}" for b in policy.blocks])
    summary = app_policy.summary(other, savings)
    assert "predicted_speedup" not in summary and "cache_bytes" not in summary
    assert summary["denoiser_calls"] == other.denoiser_calls()


def test_comparison_variant_names_are_unique_and_never_reference():
    from workbench.app.runs import unique_variants
    from workbench.compare import Variant

    names = [v.name for v in unique_variants([Variant("reference"), Variant("2 steps", steps=2), Variant("a"),
                                              Variant("2 steps", steps=2), Variant("a")])]
    assert names == ["reference (2)", "2 steps", "a", "2 steps (2)", "a (2)"]


def test_a_stopped_auto_fr_mask_shown_against_another_model_says_so(unet_pipe, dit_pipe):
    """Auto-FR's best mask is kept across a switch of model; rebuilt against the other model it names that, instead
    of a keyframes-shape message about block counts."""
    from workbench.app import autofr as app_autofr

    blocks = len(frdiff.find_blocks(dit_pipe.transformer))
    mask = torch.ones(blocks, 6, dtype=torch.bool)
    assert app_autofr.policy_from_mask(dit_pipe, mask, 6).keyframes.shape == (blocks, 6)
    message = f"learned on another model \\({blocks} blocks; this UNet2DConditionModel has 18\\)"
    with pytest.raises(ValueError, match=message):
        app_autofr.policy_from_mask(unet_pipe, mask, 6)
