"""Run a reference and any number of variants (policies, fewer steps) from the same seeds, and measure each.

Every variant samples the same labels from the same per-image seeds as the reference (the stock pipeline at
``steps`` steps), so differences are the variant's alone. Per variant: PSNR/SSIM/max-abs-diff against the
reference, class accuracy and (from 64 samples) FD-shapes, latency, measured speedup and the speedup predicted from
FLOPs before running (:mod:`frdiff.speedup`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import frdiff
from frdiff import Policy
from frdiff.blocks import capture_denoiser_call
from frdiff.compiling import graphs_compiled
from workbench.conditions import Options, call_kwargs
from workbench.metrics import compare_images
from workbench.models.schedulers import scheduler_name
from workbench.sampling import SampleResult, judge, sample


class Cancelled(RuntimeError):
    """The caller's cancel flag was set; results so far are discarded."""


@dataclass
class Variant:
    """One way to sample: ``policy`` (None = the stock pipeline) at ``steps`` (None = the policy's or the
    reference's) with ``scheduler`` (None = the comparison's)."""

    name: str
    policy: Policy | None = None
    steps: int | None = None
    scheduler: str | None = None


def measure_savings(pipe, steps: int = 1, condition=0, options: Options | None = None) -> dict:
    """FLOP shares a reuse step saves, per block and granularity, measured on one real call of ``pipe`` (for
    ``condition``: a class or a prompt, with ``options``)."""
    with frdiff.exclusive(pipe):  # the capture hook must not meet another session's run of a shared pipeline
        args, kwargs = capture_denoiser_call(pipe, lambda: pipe(**call_kwargs(pipe, [condition], options),
                                                                num_inference_steps=steps, output_type="pt"))
        return frdiff.measure_savings(frdiff.denoiser_of(pipe), None, *args, **kwargs)


def run_variant(pipe, variant: Variant, labels: list[int], seeds: list[int], steps: int, scheduler: str | None,
                guidance_scale: float | None = None, batch_size: int = 64, compile: str = "off",
                cuda_graphs: bool = False, backend: str = "inductor", options: Options | None = None,
                compile_options: dict | None = None):
    """Sample ``variant``; returns ``(SampleResult, frdiff.RunReport | None)``. Holds the pipeline's lock.

    compile / cuda_graphs / compile_options: :func:`frdiff.apply`'s; the stock variant then runs as the no-reuse
    policy in that mode."""
    steps = variant.steps or (variant.policy.steps if variant.policy else steps)
    sched = variant.scheduler or scheduler
    policy = variant.policy
    if policy is None and compile != "off":
        policy = frdiff.make_preset("none", frdiff.denoiser_of(pipe), steps, scheduler=sched or "ddim")
    if policy is None:
        with frdiff.exclusive(pipe):
            return sample(pipe, labels, seeds, steps=steps, guidance_scale=guidance_scale, scheduler=sched,
                          batch_size=batch_size, options=options), None
    with frdiff.apply(pipe, policy, compile=compile, cuda_graphs=cuda_graphs, backend=backend,
                      compile_options=compile_options) as run:
        result = sample(pipe, labels, seeds, steps=steps, guidance_scale=guidance_scale, scheduler=sched,
                        batch_size=batch_size, options=options)
    return result, run.report()


def compare(pipe, variants: list[Variant], labels: list[int], seeds: list[int], steps: int = 50,
            scheduler: str | None = "ddim", guidance_scale: float | None = None, repeats: int = 1,
            batch_size: int = 64, progress: Callable[[dict], None] | None = None,
            cancel: Callable[[], bool] | None = None, keep_images: bool = False, compile: str = "off",
            cuda_graphs: bool = False, backend: str = "inductor", options: Options | None = None,
            compile_options: dict | None = None) -> dict:
    """Reference + ``variants``, ``repeats`` interleaved timing rounds (latency = median; quality from round 1).

    Returns ``{"reference": {...}, "variants": [{...}, ...]}``; with ``keep_images`` each entry also holds its
    ``images`` tensor. ``compile`` / ``cuda_graphs`` / ``compile_options``: every entry (the reference as the
    no-reuse policy) runs in :func:`frdiff.apply`'s compile mode, after one untimed round that compiles
    (``warmup_s``); ``recompiles`` counts the graphs compiled during the timed rounds.
    """
    if len(labels) != len(seeds):
        raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
    savings = measure_savings(pipe, condition=labels[0], options=options)
    with frdiff.exclusive(pipe):  # warm-up, so the first timed run does not pay for allocation
        sample(pipe, labels[:batch_size], seeds[:batch_size], steps=2, guidance_scale=guidance_scale,
               scheduler=scheduler, batch_size=batch_size, options=options)
    everything = [Variant("reference")] + list(variants)
    mode = {"compile": compile, "cuda_graphs": cuda_graphs, "backend": backend, "options": options,
            "compile_options": compile_options}
    warmup: list[float | None] = [None] * len(everything)
    if compile != "off":  # compile (and capture) every variant's graphs before anything is timed
        for i, v in enumerate(everything):
            t0 = time.perf_counter()
            run_variant(pipe, v, labels[:batch_size], seeds[:batch_size], steps, scheduler, guidance_scale,
                        batch_size, **mode)
            warmup[i] = time.perf_counter() - t0
    graphs_before = graphs_compiled() if compile != "off" else 0
    latencies: list[list[float]] = [[] for _ in everything]
    results: list[tuple[SampleResult, object] | None] = [None] * len(everything)
    total, done = repeats * len(everything), 0
    for _ in range(max(1, repeats)):
        for i, v in enumerate(everything):
            if cancel is not None and cancel():
                raise Cancelled("cancelled")
            res, report = run_variant(pipe, v, labels, seeds, steps, scheduler, guidance_scale, batch_size, **mode)
            latencies[i].append(res.latency_s)
            if results[i] is None:
                results[i] = (res, report)
            done += 1
            if progress is not None:
                progress({"done": done, "total": total, "variant": v.name})
    ref_res, _ = results[0]
    ref_latency = statistics.median(latencies[0])
    own = scheduler_name(pipe.scheduler)  # the pipeline's own scheduler, used where none is named
    ref_entry = {"name": "reference", "steps": steps, "scheduler": scheduler or own, "latency_s": ref_latency,
                 "denoiser_calls": steps, **judge(ref_res)}
    if keep_images:
        ref_entry["images"] = ref_res.images
    out = {"reference": ref_entry, "variants": [], "savings": savings, "n": len(seeds), "compile": compile,
           "cuda_graphs": cuda_graphs}
    if compile != "off":
        out["recompiles"] = graphs_compiled() - graphs_before  # graphs compiled during the timed rounds
        ref_entry["warmup_s"] = warmup[0]
    for i, v in enumerate(everything[1:], start=1):
        res, report = results[i]
        latency = statistics.median(latencies[i])
        v_steps = v.steps or (v.policy.steps if v.policy else steps)
        cache = {}
        if v.policy is not None:
            predicted = steps / sum(frdiff.step_costs(v.policy, savings))
            calls = report.denoiser_calls
            per_image = 1 if guidance_scale is not None and guidance_scale <= 1 else savings["batch"]  # CFG: 2
            per_call = min(batch_size, len(seeds)) * per_image  # the denoiser batch of the largest call
            cache = {"cache_bytes": report.cache_bytes,
                     "predicted_cache_bytes": frdiff.cache_bytes(v.policy, savings, batch=per_call)}
        else:
            predicted, calls = steps / v_steps, v_steps
        entry = {"name": v.name, "steps": v_steps, "scheduler": v.scheduler or scheduler or own,
                 "latency_s": latency, "reference_latency_s": ref_latency, "speedup": ref_latency / latency,
                 "speedup_runs": [r / v for r, v in zip(latencies[0], latencies[i], strict=True)],  # round by round
                 "predicted_speedup": predicted, "denoiser_calls": calls,
                 "block_reuses": report.block_reuses if report else 0, **cache,
                 **compare_images(ref_res.images, res.images), **judge(res)}
        entry.pop("psnr_per_image")
        if compile != "off":
            entry["warmup_s"] = warmup[i]
        if keep_images:
            entry["images"] = res.images
        out["variants"].append(entry)
    return out
