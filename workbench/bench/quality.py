"""``bench quality-vs-latency``, ``bench schedulers`` and ``bench overhead``: where FRDiff stands against the
alternatives on the shipped models, measured from one seed set.

``quality-vs-latency`` (per model): every method samples the same classes from the same per-image seeds as the
reference (50-step DDIM); per method PSNR/SSIM against the reference, class accuracy, FD-shapes (from 64 samples),
latency (median of interleaved rounds), denoiser FLOPs per image counted with ``FlopCounterMode`` over whole sampling
runs (so policies and peers whose savings are not known in advance sit on the same axis) and denoiser calls.
Methods: fewer DDIM steps, DPM-Solver++ at fewer steps, reduced NFE (ε reuse), FRDiff uniform M = 2, 3, 4 with and
without score mixing (and M = 2 + mixing at fewer steps), forecasts (taylor1/taylor2 per block and for ε, M = 2–5,
also with TaylorSeer's placement: 2 warm-up steps and the last step computed), threshold policies and planned policies
(``policy from-run --target-compute``) from a recorded run, Auto-FR per step
and per block (trained on seeds disjoint from the evaluation seeds), DeepCache (the published ``DeepCache`` package
where it runs, and the engine's ``deepcache`` preset) and diffusers' built-in caches (``diffusers.hooks``). Peers
that do not apply to a model are listed with the reason (the exception they raise, or that they hook nothing).

``schedulers``: FR under DDIM, DPM-Solver++, Euler and UniPC at 20 and 50 steps, each against the full run of the
same scheduler, next to the stock scheduler at half the steps (the answer to the paper's open question on multistep
solvers, whose updates combine several past score evaluations).

``overhead``: the ``record-overhead``, ``analysis`` and ``app-startup`` suites in one JSON.

No plotting here (the measuring machine may lack plotly); :mod:`workbench.bench.report` draws from the JSON.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
from pathlib import Path

import torch

import frdiff
from frdiff import make_preset
from workbench.bench.methods import TRAIN_SEEDS, Method, count_flops, first_of_each_family, run_method
from workbench.bench.peers import peer_methods

REFERENCE_STEPS = 50
DDIM_STEPS = (10, 15, 20, 25, 30, 40)
DPMPP_STEPS = (10, 15, 20, 25)
INTERVALS = (2, 3, 4)
FR_FEWER_STEPS = (20, 30)  # FR M=2 + mixing on fewer steps (the paper's "FR M=2 30 steps")
THRESHOLDS = (0.05, 0.1, 0.2, 0.4)


def scaled(values: tuple[int, ...], steps: int) -> list[int]:
    """Step counts of a sweep defined for 50 steps, scaled to a ``steps``-step reference (≥ 2, < steps, unique)."""
    out = sorted({max(2, round(v * steps / REFERENCE_STEPS)) for v in values})
    return [v for v in out if v < steps]


def measure(pipe, methods: list[Method], labels: list[int], seeds: list[int], steps: int = REFERENCE_STEPS,
            repeats: int = 1, flop_seeds: int = 4, batch_size: int = 64, progress=None) -> dict:
    """The reference (``steps``-step DDIM) and ``methods`` from the same seeds: quality from the first round,
    latency the median of ``repeats`` rounds in a shuffled order each round, FLOPs from a separate run on the
    first ``flop_seeds`` seeds."""
    from workbench.compare import measure_savings
    from workbench.metrics import compare_images
    from workbench.sampling import judge, sample

    reference = Method("reference", "reference", False, steps)
    everything = [reference] + list(methods)
    with frdiff.exclusive(pipe):  # warm-up: allocation and first-call costs stay out of the timings
        sample(pipe, labels[:batch_size], seeds[:batch_size], steps=2, batch_size=batch_size)
    savings = measure_savings(pipe)
    results: list = [None] * len(everything)
    times: list[list[float]] = [[] for _ in everything]
    order = list(range(len(everything)))
    rng = random.Random(0)
    done, total = 0, len(everything) * max(1, repeats)
    for r in range(max(1, repeats)):
        if r:
            rng.shuffle(order)
        for i in order:
            if isinstance(results[i], str):
                continue
            try:
                res, calls = run_method(pipe, everything[i], labels, seeds, batch_size)
            except Exception as exc:  # a peer that fails mid-run is reported, not fatal to the suite
                if everything[i].peer is None:
                    raise
                results[i] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            times[i].append(res.latency_s)
            if results[i] is None:
                results[i] = (res, calls)
            done += 1
            if progress is not None:
                progress({"done": done, "total": total, "method": everything[i].name})
    n_flop = max(1, min(flop_seeds, len(seeds)))
    flops = [None if isinstance(results[i], str) else count_flops(pipe, m, labels[:n_flop], seeds[:n_flop])
             for i, m in enumerate(everything)]
    ref_res, _ = results[0]
    ref_latency = statistics.median(times[0])
    entries, failed = [], []
    for i, m in enumerate(everything):
        if isinstance(results[i], str):
            failed.append({"name": m.name, "family": m.family, "reason": f"failed while sampling: {results[i]}"})
            continue
        res, calls = results[i]
        latency = statistics.median(times[i])
        entry = {"name": m.name, "family": m.family, "frdiff": m.frdiff, "steps": m.steps, "scheduler": m.scheduler,
                 "params": m.params, "latency_s": latency, "latency_runs_s": times[i], "speedup": ref_latency / latency,
                 "flops_per_image": flops[i], "compute_fraction": flops[i] / flops[0], "denoiser_calls": calls}
        if m.policy is not None:
            entry["predicted_compute_fraction"] = sum(frdiff.step_costs(m.policy, savings)) / steps
            entry["step_kinds"] = "".join({"full": "K", "fr": "r", "skip": "-"}[k] for k in m.policy.step_kinds())
        quality = compare_images(ref_res.images, res.images)
        quality.pop("psnr_per_image")
        entry.update(quality)
        entry.update(judge(res))
        entries.append(entry)
    return {"reference": entries[0], "methods": entries[1:], "failed": failed}


# ---- methods --------------------------------------------------------------------------------------------------------
def stock_methods(steps: int) -> list[Method]:
    """Fewer DDIM steps and DPM-Solver++ (2nd order) at fewer steps."""
    out = [Method(f"DDIM {k}", "DDIM (fewer steps)", False, k, "ddim", params={"steps": k})
           for k in scaled(DDIM_STEPS, steps)]
    out += [Method(f"DPM-Solver++ {k}", "DPM-Solver++ (fewer steps)", False, k, "dpmpp", params={"steps": k})
            for k in scaled(DPMPP_STEPS, steps)]
    return out


def frdiff_methods(den, steps: int) -> list[Method]:
    """Reduced NFE, uniform FR ± mixing, and FR M=2 + mixing at fewer steps."""
    out = []
    for m in INTERVALS:
        out.append(Method(f"reduced NFE M={m}", "reduced NFE (output reuse)", False, steps,
                          policy=make_preset("reduced-nfe", den, steps, interval=m), params={"interval": m}))
    for mix in (False, True):
        for m in INTERVALS:
            family = "FRDiff uniform + mixing" if mix else "FRDiff uniform"
            out.append(Method(f"FR M={m}" + (" + mixing" if mix else ""), family, True, steps,
                              policy=make_preset("uniform", den, steps, interval=m, mix=mix),
                              params={"interval": m, "mixing": mix}))
    for k in scaled(FR_FEWER_STEPS, steps):
        out.append(Method(f"FR M=2 + mixing, {k} steps", "FRDiff M=2 + mixing (fewer steps)", True, k,
                          policy=make_preset("uniform", den, k, interval=2, mix=True),
                          params={"interval": 2, "mixing": True, "steps": k}))
    return out


FORECAST_INTERVALS = (2, 3, 4, 5)
FORECASTS = ("taylor1", "taylor2")
PLAN_TARGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def forecast_methods(den, steps: int) -> list[Method]:
    """Forecast reuse (policy version 2) at M = 2…5: feature and whole-block reuse with ``taylor1`` / ``taylor2``,
    ``taylor2`` with score mixing, and reduced NFE with ε forecast from the last full steps; whole-block and
    reduced-NFE forecasts again with TaylorSeer's keyframe placement (2 warm-up steps, the grid ending on the last
    step: ``--warmup 2 --last-keyframe``)."""
    out = []
    for mode in FORECASTS:
        for m in FORECAST_INTERVALS:
            feature = make_preset("uniform", den, steps, interval=m, reuse=mode)
            block = feature.replaced(granularity=["block"] * len(feature.blocks))
            out.append(Method(f"FR M={m} {mode}", f"FRDiff {mode} (feature)", True, steps, policy=feature,
                              params={"interval": m, "reuse": mode}))
            out.append(Method(f"FR M={m} {mode}, whole blocks", f"FRDiff {mode} (block)", True, steps, policy=block,
                              params={"interval": m, "reuse": mode, "granularity": "block"}))
            out.append(Method(f"reduced NFE M={m}, ε {mode}", f"reduced NFE + ε forecast ({mode})", True, steps,
                              policy=make_preset("reduced-nfe", den, steps, interval=m, reuse=mode),
                              params={"interval": m, "skip_reuse": mode}))
    for mode in FORECASTS:  # TaylorSeer's placement: 2 warm-up steps, then a grid that ends on the last step
        for m in FORECAST_INTERVALS:
            block = make_preset("uniform", den, steps, interval=m, reuse=mode, warmup=2, last=True)
            block = block.replaced(granularity=["block"] * len(block.blocks))
            out.append(Method(f"FR M={m} {mode}, whole blocks, W2+last", f"FRDiff {mode} (block, W2+last)", True,
                              steps, policy=block, params={"interval": m, "reuse": mode, "granularity": "block",
                                                           "warmup": 2, "last_keyframe": True}))
            out.append(Method(f"reduced NFE M={m} W2+last, ε {mode}", f"reduced NFE + ε forecast ({mode}, W2+last)",
                              True, steps, policy=make_preset("reduced-nfe", den, steps, interval=m, reuse=mode,
                                                              warmup=2, last=True),
                              params={"interval": m, "skip_reuse": mode, "warmup": 2, "last_keyframe": True}))
    for m in FORECAST_INTERVALS:
        out.append(Method(f"FR M={m} taylor2 + mixing", "FRDiff taylor2 + mixing (feature)", True, steps,
                          policy=make_preset("uniform", den, steps, interval=m, mix=True, reuse="taylor2"),
                          params={"interval": m, "reuse": "taylor2", "mixing": True}))
    return out


def _record_conditions(pipe, seeds: list[int]) -> dict:
    from workbench.bench.methods import seed_conditions

    conditions = seed_conditions(pipe, seeds)
    return {"prompts": conditions} if conditions and isinstance(conditions[0], str) else {"labels": conditions}


def plan_methods(pipe, model: str, steps: int, targets=PLAN_TARGETS, record_seeds: int = 4) -> list[Method]:
    """``policy from-run --target-compute`` at each target: keyframes and reuse mode per block planned from a
    ``pool16`` recording of ``record_seeds`` training seeds, the best of 3 candidates measured on those seeds."""
    from workbench.compare import measure_savings
    from workbench.plan import plan_from_run
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore

    seeds = list(range(TRAIN_SEEDS, TRAIN_SEEDS + record_seeds))
    savings = measure_savings(pipe)
    out, errors = [], None
    with tempfile.TemporaryDirectory() as tmp:
        run = record_run(pipe, model, Path(tmp) / "run", seeds=seeds, steps=steps, reduction="pool16",
                         **_record_conditions(pipe, seeds))
        store = FeatureStore.open(run)
        for target in targets:
            try:
                policy, info = plan_from_run(pipe, store, target, savings=savings, errors=errors)
            except ValueError:
                continue  # below what the patterns reach
            errors = info["errors"]
            prov = policy.provenance
            out.append(Method(f"planned from run, target {target:g}", "FRDiff planned from a run (per block)", True,
                              steps, policy=policy, params={"target_compute": target, "pattern": prov["pattern"],
                                                            "computed_blocks": prov["computed_blocks"],
                                                            "record_seeds": f"{seeds[0]}-{seeds[-1]}",
                                                            "candidates": info["candidates"]}))
    return out


def threshold_methods(pipe, model: str, steps: int, thresholds=THRESHOLDS, record_seeds: int = 4) -> list[Method]:
    """Per-block threshold policies from a ``stats`` recording of ``record_seeds`` training seeds."""
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore

    seeds = list(range(TRAIN_SEEDS, TRAIN_SEEDS + record_seeds))
    with tempfile.TemporaryDirectory() as tmp:
        out = record_run(pipe, model, Path(tmp) / "run", seeds=seeds, steps=steps, reduction="stats",
                         **_record_conditions(pipe, seeds))
        store = FeatureStore.open(out)
        rel = {b: torch.as_tensor(store.stats(b)["rel_l1"]).double().reshape(steps, -1).mean(1) for b in store.blocks}
    den = frdiff.denoiser_of(pipe)
    return [Method(f"threshold δ={d:g}", "FRDiff threshold (per block)", True, steps,
                   policy=frdiff.threshold_policy(den, rel, steps, d, source=f"{model} seeds {seeds[0]}-"
                                                  f"{seeds[-1]}"), params={"threshold": d, "record_seeds": seeds})
            for d in thresholds]


FORECAST_AUTOFR = (("step", "block", "taylor2", 0.4),)  # (gates, granularity, reuse, target) with forecasts


def autofr_methods(pipe, model: str, steps: int, targets: tuple[float, ...] | None = None, iterations: int = 30,
                   train_seeds: int = 32, gates=("step", "block"), forecast_runs=FORECAST_AUTOFR,
                   progress=None) -> list[Method]:
    """Auto-FR policies learned on ``train_seeds`` seeds from :data:`TRAIN_SEEDS` (disjoint from evaluation):
    feature reuse (hold) per step and per block at ``targets`` (default the model's target of ``bench autofr``,
    :data:`workbench.bench.autofr.TARGETS`: between uniform M=3 and M=4, reachable with feature reuse; 0.6 for
    other models), and ``forecast_runs`` learned with forecasts in place."""
    from frdiff.autofr import AutoFRConfig
    from workbench.autofr import learn_for_pipeline
    from workbench.bench.autofr import TARGETS
    from workbench.compare import measure_savings

    savings = measure_savings(pipe)
    train = list(range(TRAIN_SEEDS, TRAIN_SEEDS + train_seeds))
    targets = targets or (TARGETS.get(model, 0.6),)
    runs = [(g, "feature", "hold", t) for g in gates for t in targets] + list(forecast_runs)
    out = []
    for g, granularity, reuse, target in runs:
        config = AutoFRConfig(gates=g, granularity=granularity, reuse=reuse, target_compute=target,
                              iterations=iterations)
        from workbench.bench.methods import seed_conditions

        conditions = seed_conditions(pipe, train)
        prompts = conditions if isinstance(conditions[0], str) else None
        result = learn_for_pipeline(pipe, config, steps, train, savings=savings, model_name=model, progress=progress,
                                    prompts=prompts)
        hold = reuse == "hold" and granularity == "feature"
        name = f"Auto-FR per {g}, target {target:g}" + ("" if hold else f", {granularity} {reuse}")
        family = f"Auto-FR (per {g})" + ("" if hold else f" {granularity} {reuse}")
        out.append(Method(name, family, True, steps, policy=result.policy,
                          params={"gates": g, "granularity": granularity, "reuse": reuse, "target_compute": target,
                                  "iterations": iterations, "train_seeds": f"{train[0]}-{train[-1]}",
                                  "train_s": result.seconds}))
    return out


# ---- suites ---------------------------------------------------------------------------------------------------------
def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _env(device: str) -> dict:
    from workbench.bench.common import machine_info

    info = machine_info()
    info["device"] = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return info


def bench_quality_latency(repeats: int = 1, seeds: int = 64, models: tuple[str, ...] = ("tiny-unet", "tiny-dit"),
                          steps: int = REFERENCE_STEPS, device: str | None = None, autofr: bool = True,
                          autofr_iterations: int = 30, autofr_train_seeds: int = 32, autofr_targets=None,
                          thresholds=THRESHOLDS, peers: bool = True, plans: bool = True, flop_seeds: int = 4,
                          batch_size: int = 64,
                          small: bool = False, progress=None) -> dict:
    """The ``quality-vs-latency`` suite (module docstring). ``small`` keeps the first setting of each method family
    (two of fewer DDIM steps and reduced NFE): the CI smoke size."""
    from workbench.models.zoo import load_pipeline

    if seeds < 1 or steps < 4:
        raise ValueError(f"quality-vs-latency needs ≥ 1 seed and ≥ 4 steps, got {seeds} seeds, {steps} steps")
    device = _device(device)
    eval_seeds = list(range(seeds))
    report = {"suite": "quality-vs-latency", "machine": _env(device), "steps": steps, "reference": "DDIM",
              "seeds": f"0-{seeds - 1}", "n": seeds, "repeats": repeats, "flop_seeds": flop_seeds,
              "batch_size": batch_size, "train_seeds_from": TRAIN_SEEDS, "small": small, "models": {}}
    for model in models:
        pipe = load_pipeline(model, device=device)
        pipe.set_progress_bar_config(disable=True)
        den = frdiff.denoiser_of(pipe)
        methods = stock_methods(steps) + frdiff_methods(den, steps) + forecast_methods(den, steps)
        if thresholds:
            methods += threshold_methods(pipe, model, steps, thresholds)
        if plans:
            methods += plan_methods(pipe, model, steps, (0.5,) if small else PLAN_TARGETS)
        if autofr:
            methods += autofr_methods(pipe, model, steps, autofr_targets, autofr_iterations, autofr_train_seeds)
        skipped: list[dict] = []
        if peers:
            more, skipped = peer_methods(pipe, steps)
            methods += more
        if small:
            methods = first_of_each_family(methods, 1, keep_two=("DDIM (fewer steps)", "reduced NFE (output reuse)"))
        from workbench.bench.methods import seed_conditions

        labels = seed_conditions(pipe, eval_seeds)
        result = measure(pipe, methods, labels, eval_seeds, steps, repeats, flop_seeds, batch_size, progress)
        skipped += result.pop("failed")
        report["models"][model] = {"denoiser": type(den).__name__, **result, "not_applicable": skipped,
                                   "autofr": "run" if autofr else "skipped (--no-autofr)"}
        del pipe
    return report


# (label, preset, interval, mixing, reuse, granularity): the paper's question (FR ± mixing and reduced NFE under
# multistep solvers) and the forecast answer to it (ε forecast at skipped steps, whole-block forecasts)
SCHEDULER_VARIANTS = [("reduced NFE M=2", "reduced-nfe", 2, False, "hold", None, "output"),
                      ("reduced NFE M=2, ε taylor1", "reduced-nfe", 2, False, "taylor1", None, "output"),
                      ("reduced NFE M=2, ε taylor2", "reduced-nfe", 2, False, "taylor2", None, "output"),
                      ("reduced NFE M=2, x̂₀ taylor1", "reduced-nfe", 2, False, "taylor1", None, "data"),
                      ("reduced NFE M=2, x̂₀ taylor2", "reduced-nfe", 2, False, "taylor2", None, "data"),
                      ("FR M=2", "uniform", 2, False, "hold", None, "output"),
                      ("FR M=2 + mixing", "uniform", 2, True, "hold", None, "output"),
                      ("FR M=3", "uniform", 3, False, "hold", None, "output"),
                      ("FR M=3 + mixing", "uniform", 3, True, "hold", None, "output"),
                      ("FR M=2 taylor2, whole blocks", "uniform", 2, False, "taylor2", "block", "output")]


def bench_schedulers(repeats: int = 1, seeds: int = 64, models: tuple[str, ...] = ("tiny-unet", "tiny-dit"),
                     steps: tuple[int, ...] = (20, 50), schedulers: tuple[str, ...] = ("ddim", "dpmpp", "euler",
                                                                                      "unipc"),
                     device: str | None = None, progress=None) -> dict:
    """The ``schedulers`` suite: per model, step count and scheduler, FR variants and the stock scheduler at half
    the steps against the full run of that scheduler, from the same seeds."""
    from workbench.compare import Variant, compare
    from workbench.models.zoo import load_pipeline

    device = _device(device)
    report = {"suite": "schedulers", "machine": _env(device), "steps": list(steps), "schedulers": list(schedulers),
              "seeds": f"0-{seeds - 1}", "n": seeds, "repeats": repeats, "models": {}}
    for model in models:
        pipe = load_pipeline(model, device=device)
        pipe.set_progress_bar_config(disable=True)
        from workbench.bench.methods import seed_conditions

        labels = seed_conditions(pipe, list(range(seeds)))
        entry: dict = {}
        for n_steps in steps:
            for sched in schedulers:
                variants = [Variant(f"{sched} {n_steps // 2} steps", None, steps=n_steps // 2)]
                for label, preset, m, mix, reuse, gran, space in SCHEDULER_VARIANTS:
                    policy = make_preset(preset, frdiff.denoiser_of(pipe), n_steps, scheduler=sched, interval=m,
                                         mix=mix, reuse=reuse, skip_space=space)
                    if gran:
                        policy = policy.replaced(granularity=[gran] * len(policy.blocks))
                    variants.append(Variant(label, policy))
                res = compare(pipe, variants, labels, list(range(seeds)), steps=n_steps, scheduler=sched,
                              repeats=repeats, progress=progress)
                res.pop("savings")
                entry.setdefault(str(n_steps), {})[sched] = res
        report["models"][model] = entry
        del pipe
    return report


def bench_overhead(repeats: int = 3, small: bool = False, app: bool = True, device: str = "cpu") -> dict:
    """The ``overhead`` suite: recording overhead per reduction, analysis time and app start-up, in one JSON.
    ``small``: 6 steps, 1 repeat, no app start-up (the CI smoke size)."""
    from workbench.bench.foundation import bench_analysis, bench_record_overhead

    steps = 6 if small else 50
    repeats = 1 if small else repeats
    report = {"suite": "overhead", "machine": _env(device), "small": small, "steps": steps, "repeats": repeats,
              "record_overhead": bench_record_overhead(repeats=repeats, device=device, steps=steps),
              "analysis": bench_analysis(repeats=repeats, device=device, steps=steps)}
    if app and not small:
        from workbench.bench.app import bench_app_startup, browser_missing

        reason = browser_missing()
        report["app_startup"] = {"skipped": reason} if reason else bench_app_startup(repeats=repeats)
    else:
        report["app_startup"] = {"skipped": "small run" if small else "--no-app"}
    return report


def finite(report) -> bool:
    """Whether every number in ``report`` is finite (the smoke tests' check that nothing came out NaN)."""
    if isinstance(report, dict):
        return all(finite(v) for v in report.values())
    if isinstance(report, list):
        return all(finite(v) for v in report)
    if isinstance(report, float):
        return math.isfinite(report)
    return True
