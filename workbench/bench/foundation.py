"""Benchmarks: commands that produce the numbers quoted in docs/ (never timed tests).

Suites:
- ``foundation``: per shipped model, wall time of a 50-step DDIM sample of 4 images with classifier-free guidance
  (the size budget of the shipped models: ≤ 5 s on the 2-core reference CPU), and the procedural data generator's
  throughput.
- ``analysis``: time to analyse a full recorded tiny-unet run (all blocks, 50 steps, 4 images, full maps); target
  ≤ 2 s on the 2-core reference CPU.
"""

from __future__ import annotations

import statistics
import time

import torch

from workbench.bench.common import machine_info, median_time
from workbench.models.data import make_shapes


def bench_foundation(repeats: int = 3, device: str = "cpu") -> dict:
    """Sampling latency of the shipped models (50 DDIM steps, 4 images, CFG) and data generation throughput.

    The models run interleaved — one warm-up each, then round r times every model once — so that a drift of a shared
    machine hits them alike (``runs_s`` lists each model's times in round order)."""
    from workbench.bench.methods import seed_conditions
    from workbench.models.zoo import EMBEDDED, load_pipeline

    runners = {}
    for name in EMBEDDED:
        pipe = load_pipeline(name, device=device)
        # class-conditional: classes 0-3; tiny-sd: four scene captions, its VAE decode and text encoding included
        conditions = seed_conditions(pipe, [0, 1, 2, 3])

        def run(pipe=pipe, conditions=conditions):
            gens = [torch.Generator().manual_seed(i) for i in range(4)]
            return pipe(conditions, num_inference_steps=50, generator=gens)

        run()  # warm-up
        runners[name] = (run, getattr(pipe.config, "default_guidance_scale", 7.5))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, (run, _) in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    models = {name: dict(sample_4_images_50_steps_cfg_s=statistics.median(times[name]), runs_s=times[name],
                         guidance_scale=guidance) for name, (_, guidance) in runners.items()}
    med, data_times = median_time(lambda: make_shapes(4096, seed=0), repeats)
    return dict(suite="foundation", machine=machine_info(), device=device, models=models, interleaved=True,
                data=dict(images=4096, median_s=med, images_per_s=4096 / med))


def bench_record_overhead(repeats: int = 5, device: str = "cpu", steps: int = 50) -> dict:
    """Sampling time with the recorder attached (per reduction) against the same run without hooks.

    Same pipeline call (4 images, CFG, DDIM, ``steps`` steps). Runs are interleaved (plain, stats, pool16, full,
    plain, …) so that drifts of a shared machine hit all variants alike; the overhead is the median over repeats of
    (recorded / the plain run just before it) − 1. Sampling time only: the recorder's one-off planning forward is
    reported separately as ``plan_s``.
    """
    import tempfile
    from pathlib import Path

    from workbench.models.catalog import CLASS_CONDITIONAL
    from workbench.models.zoo import load_pipeline
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore

    reductions = ("stats", "pool16", "full")
    report: dict = dict(suite="record-overhead", machine=machine_info(), device=device, steps=steps, models={})
    for name in CLASS_CONDITIONAL:
        pipe = load_pipeline(name, device=device)

        def plain(pipe=pipe):
            gens = [torch.Generator().manual_seed(i) for i in range(4)]
            t0 = time.perf_counter()
            pipe([0, 1, 2, 3], num_inference_steps=steps, generator=gens, output_type="pt")
            return time.perf_counter() - t0

        def recorded(reduction, pipe=pipe, name=name):
            with tempfile.TemporaryDirectory() as tmp:
                out = record_run(pipe, name, Path(tmp) / "run", labels=[0, 1, 2, 3], seeds=[0, 1, 2, 3],
                                 steps=steps, reduction=reduction)
                store = FeatureStore.open(out)
                timing = store.manifest["timing"]
                return timing["sampling_s"], timing["plan_s"], store.disk_bytes()

        plain()  # warm-up
        base_runs: list[float] = []
        rows: dict = {r: dict(runs_s=[], ratios=[], plan_s=[], store_bytes=0) for r in reductions}
        for _ in range(repeats):
            base = plain()
            base_runs.append(base)
            for r in reductions:
                t, plan_s, size = recorded(r)
                rows[r]["runs_s"].append(t)
                rows[r]["ratios"].append(t / base)
                rows[r]["plan_s"].append(plan_s)
                rows[r]["store_bytes"] = size
        result = {"no_hooks_s": statistics.median(base_runs), "no_hooks_runs_s": base_runs}
        for r in reductions:
            row = rows[r]
            result[r] = dict(sampling_s=statistics.median(row["runs_s"]), runs_s=row["runs_s"],
                             overhead=statistics.median(row["ratios"]) - 1, paired_ratios=row["ratios"],
                             plan_s=statistics.median(row["plan_s"]), store_bytes=row["store_bytes"])
        report["models"][name] = result
    return report


def bench_analysis(repeats: int = 3, device: str = "cpu", steps: int = 50) -> dict:
    """Time to analyse a full recorded run of tiny-unet (all blocks, ``steps`` steps, 4 images, full maps), for the
    conditional half: ``analyze_maps`` (read every block, adjacent statistics, steps × steps cosine and relative-L1
    matrices, spectrum of every step) followed by ``analyze_store`` (the ``analyze`` report: summaries, spread
    across samples, feature band energy, predicted-x0 and final-image spectra), the whole as one timed call.

    Each repeat also times the parts on their own, interleaved with the whole so that drifts of a shared machine hit
    all alike: reading every block (``iter_maps``), similarity and spectra on maps already in memory, and the
    report. Parts run separately, so they do not add up to the whole (reads overlap computation there).
    """
    import tempfile
    from pathlib import Path

    from workbench.analysis.frequency import spectra_over_time
    from workbench.analysis.reading import iter_maps
    from workbench.analysis.report import analyze_store
    from workbench.analysis.similarity import analyze_maps, block_similarity
    from workbench.models.zoo import load_pipeline
    from workbench.record.recorder import record_run
    from workbench.record.store import FeatureStore

    pipe = load_pipeline("tiny-unet", device=device)
    with tempfile.TemporaryDirectory() as tmp:
        out = record_run(pipe, "tiny-unet", Path(tmp) / "run", labels=[0, 1, 2, 3], seeds=[0, 1, 2, 3],
                         steps=steps, reduction="full")
        store = FeatureStore.open(out)
        maps = dict(iter_maps(store))

        def whole():
            s = FeatureStore.open(out)
            return analyze_store(s, maps_analysis=analyze_maps(s))

        parts = {
            "read_s": lambda: sum(m.nbytes for _, m in iter_maps(FeatureStore.open(out))),
            "similarity_s": lambda: [block_similarity(m) for m in maps.values()],
            "spectra_s": lambda: [spectra_over_time(m) for m in maps.values() if m.ndim == 5],
            "report_s": lambda: analyze_store(FeatureStore.open(out), maps_analysis={}),
        }
        whole()  # warm-up (imports, FFT plans, page cache)
        runs: list[float] = []
        part_runs: dict[str, list[float]] = {k: [] for k in parts}
        for _ in range(repeats):
            t0 = time.perf_counter()
            whole()
            runs.append(time.perf_counter() - t0)
            for key, fn in parts.items():
                t0 = time.perf_counter()
                fn()
                part_runs[key].append(time.perf_counter() - t0)
        size = store.disk_bytes()
        maps_bytes = sum(m.nbytes for m in maps.values())
        blocks = len(store.blocks)
    return dict(suite="analysis", machine=machine_info(), model="tiny-unet", steps=steps, images=4, blocks=blocks,
                store_bytes=size, maps_bytes_read=maps_bytes, median_s=statistics.median(runs), runs_s=runs,
                parts_median_s={k: statistics.median(v) for k, v in part_runs.items()}, parts_runs_s=part_runs)
