"""Planning a policy from measured errors under a compute budget (frdiff.planning) and from a recorded run
(workbench.plan): patterns, the budget, the shared keyframes, the measured choice among candidates."""

import pytest
import torch

import frdiff
from frdiff.planning import keyframe_pattern, patterns, plan_candidates, reuse_pattern, shortlist


def test_patterns():
    assert keyframe_pattern(10, 3).int().tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert keyframe_pattern(10, 3, warmup=2).int().tolist() == [1, 1, 1, 0, 0, 1, 0, 0, 1, 0]
    assert reuse_pattern(9, 3).int().tolist() == [1, 1, 1, 0, 1, 1, 0, 1, 1]
    pats = patterns(20)
    assert pats["M1+W0"].all() and "M2+W0" in pats and "R4+W2" in pats
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
    # the 3 best estimates, plus the best of each warm-up (0, 2, 4) they lack
    assert prov["made_by"] == "plan" and 1 <= len(tried) <= 5 and prov["compute_fraction"] <= 0.5 + 1e-9
    assert prov["pattern"] == max(tried, key=lambda c: c["psnr"])["pattern"]  # measured, not estimated
    assert all(0 < c["psnr"] <= 100 for c in tried) and prov["validated_on_seeds"] == [1000, 1001]


def test_shortlist_adds_the_best_candidate_of_each_missing_warm_up():
    class P:
        def __init__(self, pattern):
            self.provenance = {"pattern": pattern}

    ranked = [P(n) for n in ("M2+W0", "R4+W0", "M3+W0", "M2+W2", "M3+W2", "R3+W4", "M2+W4")]
    assert [p.provenance["pattern"] for p in shortlist(ranked, 3)] == ["M2+W0", "R4+W0", "M3+W0", "M2+W2", "R3+W4"]
    assert [p.provenance["pattern"] for p in shortlist(ranked[3:], 2)] == ["M2+W2", "M3+W2", "R3+W4"]
    assert [p.provenance["pattern"] for p in shortlist(ranked[:2], 3)] == ["M2+W0", "R4+W0"]
