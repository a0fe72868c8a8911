"""Planning a policy from measured errors under a compute budget (frdiff.planning) and from a recorded run
(workbench.plan): patterns, the budget, the shared keyframes, the measured choice among candidates."""

import pytest
import torch

import frdiff
from frdiff.planning import (
    keyframe_pattern,
    pattern_kind,
    patterns,
    plan_candidates,
    reuse_pattern,
    shortlist,
    skip_candidates,
)


def test_patterns():
    assert keyframe_pattern(10, 3).int().tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert keyframe_pattern(10, 3, warmup=2).int().tolist() == [1, 1, 1, 0, 0, 1, 0, 0, 1, 0]
    # the grid counted back from the last step, which is always a keyframe (after the warm-up and step 0)
    assert keyframe_pattern(10, 3, last=True).int().tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert keyframe_pattern(11, 3, last=True).int().tolist() == [1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert keyframe_pattern(10, 3, warmup=2, last=True).int().tolist() == [1, 1, 0, 1, 0, 0, 1, 0, 0, 1]
    # TaylorSeer's schedule at interval 2 after 2 warm-up steps: 0, 1, 3, 5, …, 49 — 26 keyframes of 50
    ts = keyframe_pattern(50, 2, warmup=2, last=True)
    assert ts.nonzero().flatten().tolist() == [0, 1, *range(3, 50, 2)]
    assert reuse_pattern(9, 3).int().tolist() == [1, 1, 1, 0, 1, 1, 0, 1, 1]
    pats = patterns(20)
    assert pats["M1+W0"].all() and "M2+W0" in pats and "R4+W2" in pats and "M4+W2+L" in pats
    assert all(pats[n][-1] for n in pats if n.endswith("+L"))
    assert pattern_kind("M3+W2+L") == (2, True) and pattern_kind("R4+W0") == (0, False)
    with pytest.raises(ValueError, match="not a pattern name"):
        pattern_kind("M3")
    masks = list(pats.values())
    assert not any(torch.equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1:])  # no duplicates


def _errors(blocks, pats, worst="b1"):
    """Synthetic estimates: error grows with the reuse steps; taylor2 < taylor1 < hold; one block much worse."""
    out = {}
    for b in blocks:
        scale = 10.0 if b == worst else 1.0
        out[b] = {(p, m): scale * float((~mask).sum()) * f for p, mask in pats.items()
                  for m, f in (("hold", 3.0), ("taylor1", 2.0), ("taylor2", 1.0))}
    return out


def test_plans_meet_the_budget_share_keyframes_and_compute_the_worst_block(dit_pipe):
    den = dit_pipe.transformer
    blocks = [b for b, _ in frdiff.find_blocks(den)]
    savings = {"block": {b: 0.16 for b in blocks}, "feature": {b: 0.05 for b in blocks}}
    pats = patterns(12)
    errors = _errors(blocks, pats, worst=blocks[1])
    for target in (0.3, 0.5, 0.8):
        plans = plan_candidates(den, errors, pats, savings, 12, target)
        est = [p.provenance["estimated_error"] for p in plans]
        assert est == sorted(est)
        for p in plans:
            compute = 1 - sum(savings["block"][b] * float((~row).sum()) for b, row in zip(p.blocks, p.keyframes,
                                                                                       strict=True)) / 12
            assert compute <= target + 1e-9 and p.provenance["compute_fraction"] == pytest.approx(compute)
            reusing = [row for row in p.keyframes if not row.all()]
            assert all(torch.equal(row, reusing[0]) for row in reusing)  # one shared pattern
            assert set(p.reuse[i] for i, row in enumerate(p.keyframes) if not row.all()) <= {"taylor2"}
    best = plan_candidates(den, errors, pats, savings, 12, 0.8)[0]
    assert blocks[1] in best.provenance["computed_blocks"]  # the most error per compute is computed first
    with pytest.raises(ValueError, match="below what these patterns can reach"):
        plan_candidates(den, errors, pats, savings, 12, 0.01)


def test_policy_from_run_plans_and_picks_the_best_measured_candidate(tmp_path, dit_pipe):
    from workbench.cli import main
    from workbench.record.recorder import record_run

    run = record_run(dit_pipe, "tiny-dit", tmp_path / "run", labels=[0, 4], seeds=[1000, 1001], steps=8,
                     reduction="pool16")
    out = tmp_path / "plan.json"
    assert main(["policy", "from-run", str(run), "--model", "tiny-dit", "--target-compute", "0.5", "--out", str(out),
                 "--json"]) == 0
    policy = frdiff.Policy.load(out)
    prov = policy.provenance
    tried = prov["candidates"]
    # the 3 best estimates, plus the best of each kind (warm-up 0, 2, 4 × last step computed or not) they lack,
    # plus the two whole-step candidates (ε forecast by taylor1 and taylor2)
    assert prov["made_by"] == "plan" and 3 <= len(tried) <= 10 and prov["compute_fraction"] <= 0.5 + 1e-9
    assert [c.get("skip") for c in tried if "skip" in c] == ["taylor1", "taylor2"]
    assert prov["pattern"] == max(tried, key=lambda c: c["psnr"])["pattern"]  # measured, not estimated
    assert all(0 < c["psnr"] <= 100 for c in tried) and prov["validated_on_seeds"] == [1000, 1001]


def test_shortlist_adds_the_best_candidate_of_each_missing_warm_up():
    class P:
        def __init__(self, pattern):
            self.provenance = {"pattern": pattern}

    ranked = [P(n) for n in ("M2+W0", "R4+W0", "M3+W0", "M2+W2", "M3+W2", "M3+W0+L", "R3+W4", "M2+W4", "M2+W0+L",
                             "M4+W4+L")]
    assert [p.provenance["pattern"] for p in shortlist(ranked, 3)] == ["M2+W0", "R4+W0", "M3+W0", "M2+W2", "M3+W0+L",
                                                                       "R3+W4", "M4+W4+L"]
    assert [p.provenance["pattern"] for p in shortlist(ranked[3:], 2)] == ["M2+W2", "M3+W2", "M3+W0+L", "R3+W4",
                                                                           "M4+W4+L"]
    assert [p.provenance["pattern"] for p in shortlist(ranked[:2], 3)] == ["M2+W0", "R4+W0"]


def test_presets_place_keyframes_after_a_warm_up_and_on_the_last_step(dit_pipe, tmp_path):
    from workbench.cli import main

    den = dit_pipe.transformer
    p = frdiff.make_preset("reduced-nfe", den, 50, interval=4, warmup=2, last=True, reuse="taylor2")
    assert p.keyframes[0].nonzero().flatten().tolist() == [0, 1, *range(5, 50, 4)] and p.denoiser_calls() == 14
    assert p.provenance["warmup"] == 2 and p.provenance["last_keyframe"] is True
    u = frdiff.make_preset("uniform", den, 10, interval=3, warmup=2)
    assert all(torch.equal(row, keyframe_pattern(10, 3, warmup=2)) for row in u.keyframes)
    plain = frdiff.make_preset("uniform", den, 10, interval=3)
    assert "warmup" not in plain.provenance and "last_keyframe" not in plain.provenance  # version-1 files unchanged
    with pytest.raises(ValueError, match="warmup must be ≥ 0"):
        frdiff.make_preset("uniform", den, 10, warmup=-1)
    assert main(["policy", "make", "--model", "tiny-dit", "--warmup", "-1", "--out", str(tmp_path / "p.json")]) == 2
    assert not (tmp_path / "p.json").exists()


def test_skip_candidates_call_the_denoiser_on_the_densest_pattern_that_fits(dit_pipe):
    den = dit_pipe.transformer
    pats = patterns(50)
    cands = skip_candidates(den, pats, 50, 0.3)
    assert [c.skip_reuse for c in cands] == ["taylor1", "taylor2"]
    for c in cands:
        calls = c.denoiser_calls()
        assert calls <= 15 and c.provenance["compute_fraction"] == calls / 50
        assert c.step_kinds().count("full") == calls and "fr" not in c.step_kinds()  # call or skip, nothing between
    # no M pattern with 15 keyframes exists at 50 steps; of the 14-keyframe ones, one that ends on the last step
    assert cands[0].denoiser_calls() == 14 and cands[0].keyframes[0, -1]
    assert skip_candidates(den, pats, 50, 0.01) == []  # nothing fits
