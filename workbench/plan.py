"""Policies from a recorded run under a compute budget: keyframes *and* reuse mode per block (``policy from-run
--target-compute``), shared by the CLI, the app and the benchmarks.

1. Estimate, from the run's stored maps, the error every keyframe pattern × reuse mode would make in every block
   (:func:`workbench.analysis.predictability.option_errors`).
2. :func:`frdiff.planning.plan_candidates`: for every pattern that fits the budget, the blocks to compute at every
   step and each other block's best mode, ranked by the summed estimated error.
3. Run the shortlist (:func:`frdiff.planning.shortlist`: the 3 best estimates and the best of each kind of
   pattern — 0, 2 or 4 steps computed in full first, × the last step a keyframe or not — they lack) on the recorded
   seeds next to the full run (:func:`workbench.compare.compare`), with the whole-step candidates
   (:func:`frdiff.planning.skip_candidates`: no call at the reuse steps, ε forecast), and
   keep the one with the highest PSNR: the estimates are per block and cannot see how one block's error propagates
   through the next, so the final choice is measured, not estimated. Those seeds are the recording's, never the
   seeds a benchmark evaluates on.
"""

from __future__ import annotations

from collections.abc import Callable

import frdiff
from frdiff.planning import patterns, plan_candidates, shortlist, skip_candidates
from workbench.analysis.predictability import option_errors


def plan_from_run(pipe, store, target: float, granularity: str = "block", modes=frdiff.REUSE_MODES,
                  candidates: int = 3, savings: dict | None = None, errors: dict | None = None,
                  progress: Callable[[dict], None] | None = None, skip: bool = True) -> tuple[frdiff.Policy, dict]:
    """The planned policy for ``pipe`` from the recorded run ``store`` at compute ≤ ``target`` and what was tried:
    ``(policy, {"candidates": [{pattern, compute_fraction, estimated_error, psnr}], "errors": ...})``.
    ``errors``: the estimates of an earlier call on the same run (they do not depend on the target); ``skip``: run
    the whole-step candidates too (:func:`frdiff.planning.skip_candidates`: reduced NFE on the densest pattern that
    fits, ε forecast by taylor1 and taylor2)."""
    from workbench.compare import Variant, compare, measure_savings

    if not store.complete:
        raise ValueError(f"the run in {store.directory} is incomplete ({store.steps_done} of "
                         f"{store.manifest['steps']} steps)")
    steps = store.steps_done
    pats = patterns(steps)
    errors = errors if errors is not None else option_errors(store, pats, modes)
    savings = savings if savings is not None else measure_savings(pipe)
    scheduler = store.manifest["scheduler"]["name"]
    den, source = frdiff.denoiser_of(pipe), {"source": str(store.directory)}
    skips = skip_candidates(den, pats, steps, target, scheduler=scheduler, provenance=source) if skip else []
    try:
        ranked = plan_candidates(den, errors, pats, savings, steps, target, granularity, scheduler=scheduler,
                                 provenance=source)
    except ValueError:
        if not skips:
            raise
        ranked = []
    short = shortlist(ranked, candidates) + skips
    tried = [{"pattern": p.provenance["pattern"], "compute_fraction": p.provenance["compute_fraction"],
              "estimated_error": p.provenance["estimated_error"],
              **({"skip": p.provenance["skip"]} if "skip" in p.provenance else {})} for p in short]
    if len(short) > 1:
        labels, seeds = store.manifest["conditions"], store.manifest["seeds"]
        res = compare(pipe, [Variant(f"candidate {i}", p) for i, p in enumerate(short)], labels, seeds,
                      steps=steps, scheduler=scheduler, guidance_scale=store.manifest.get("guidance_scale"),
                      progress=progress)
        for row, v in zip(tried, res["variants"], strict=True):
            row["psnr"] = v["psnr"]
        best = max(range(len(short)), key=lambda i: tried[i]["psnr"])
    else:
        best = 0
    policy = short[best]
    policy.provenance = {**policy.provenance, "candidates": tried, "validated_on_seeds": store.manifest["seeds"]}
    return policy, {"candidates": tried, "errors": errors}
