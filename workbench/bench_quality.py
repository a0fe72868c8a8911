"""``bench quality-vs-latency``, ``bench schedulers`` and ``bench overhead``: where FRDiff stands against the
alternatives on the shipped models, measured from one seed set.

``quality-vs-latency`` (per model): every method samples the same classes from the same per-image seeds as the
reference (50-step DDIM); per method PSNR/SSIM against the reference, class accuracy, FD-shapes (from 64 samples),
latency (median of interleaved rounds), denoiser FLOPs per image counted with ``FlopCounterMode`` over whole sampling
runs (so policies and peers whose savings are not known in advance sit on the same axis) and denoiser calls.
Methods: fewer DDIM steps, DPM-Solver++ at fewer steps, reduced NFE (ε reuse), FRDiff uniform M = 2, 3, 4 with and
without score mixing (and M = 2 + mixing at fewer steps), threshold policies from a recorded run, Auto-FR per step
and per block (trained on seeds disjoint from the evaluation seeds), DeepCache (the published ``DeepCache`` package
where it runs, and the engine's ``deepcache`` preset) and diffusers' built-in caches (``diffusers.hooks``). Peers
that do not apply to a model are listed with the reason (the exception they raise, or that they hook nothing).

``schedulers``: FR under DDIM, DPM-Solver++, Euler and UniPC at 20 and 50 steps, each against the full run of the
same scheduler, next to the stock scheduler at half the steps (the answer to PAPER.md's open question on multistep
solvers, whose updates combine several past score evaluations).

``overhead``: the ``record-overhead``, ``analysis`` and ``app-startup`` suites in one JSON.

No plotting here (the measuring machine may lack plotly); :mod:`workbench.bench_report` draws from the JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import statistics
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

import frdiff
from frdiff import Policy, make_preset

REFERENCE_STEPS = 50
DDIM_STEPS = (10, 15, 20, 25, 30, 40)
DPMPP_STEPS = (10, 15, 20, 25)
INTERVALS = (2, 3, 4)
FR_FEWER_STEPS = (20, 30)  # FR M=2 + mixing on fewer steps (the paper's "FR M=2 30 steps")
THRESHOLDS = (0.05, 0.1, 0.2, 0.4)
DEEPCACHE_INTERVALS = (2, 3, 5)
TRAIN_SEEDS = 1000  # first training seed of Auto-FR and of the threshold policies' recorded run


class NotApplicable(RuntimeError):
    """A peer method that cannot run on this model; the message says why."""


@dataclass
class Method:
    """One way to sample: a stock scheduler at ``steps``, an FRDiff ``policy``, or a ``peer`` (a context manager
    factory ``peer(pipe)`` that attaches another library's cache for one pipeline call)."""

    name: str
    family: str  # one line per family in the plots
    frdiff: bool  # counts as an FRDiff variant in the summary
    steps: int
    scheduler: str = "ddim"
    policy: Policy | None = None
    peer: Callable | None = None
    params: dict = field(default_factory=dict)


def scaled(values: tuple[int, ...], steps: int) -> list[int]:
    """Step counts of a sweep defined for 50 steps, scaled to a ``steps``-step reference (≥ 2, < steps, unique)."""
    out = sorted({max(2, round(v * steps / REFERENCE_STEPS)) for v in values})
    return [v for v in out if v < steps]


# ---- running one method ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def attached(pipe, method: Method) -> Iterator:
    """``method`` attached to ``pipe`` for one pipeline call (peers are attached fresh per call: their state is
    per run), holding the pipeline's lock. Yields the :class:`frdiff.FRRun` of a policy, else ``None``."""
    if method.policy is not None:
        with frdiff.apply(pipe, method.policy) as run:
            yield run
    elif method.peer is not None:
        with frdiff.exclusive(pipe), method.peer(pipe):
            yield
    else:
        with frdiff.exclusive(pipe):
            yield


def run_method(pipe, method: Method, labels: list[int], seeds: list[int], batch_size: int = 64):
    """Sample ``method``: ``(SampleResult, denoiser calls per image)``."""
    from workbench.sampling import SampleResult, sample

    calls = [0]  # module calls (a peer that skips blocks still calls the denoiser); policies: the engine's count
    handle = pipe.denoiser.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    parts, engine_calls = [], 0
    try:
        for start in range(0, len(seeds), batch_size):
            with attached(pipe, method) as run:
                parts.append(sample(pipe, labels[start:start + batch_size], seeds[start:start + batch_size],
                                    steps=method.steps, scheduler=method.scheduler, batch_size=batch_size))
            if run is not None:
                engine_calls += run.report().denoiser_calls
    finally:
        handle.remove()
    if method.policy is not None:
        calls[0] = engine_calls
    result = SampleResult(torch.cat([p.images for p in parts]), list(labels), list(seeds),
                          sum(p.latency_s for p in parts))
    return result, calls[0] / max(1, len(parts))


def count_flops(pipe, method: Method, labels: list[int], seeds: list[int]) -> float:
    """Denoiser FLOPs per image of a whole sampling run of ``method`` (one batch), counted as executed."""
    from frdiff.blocks import flop_counter
    from workbench.sampling import sample

    with attached(pipe, method), flop_counter() as counter:
        sample(pipe, labels, seeds, steps=method.steps, scheduler=method.scheduler, batch_size=len(seeds))
    return counter.get_total_flops() / len(seeds)


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


def threshold_methods(pipe, model: str, steps: int, thresholds=THRESHOLDS, record_seeds: int = 4) -> list[Method]:
    """Per-block threshold policies from a ``stats`` recording of ``record_seeds`` training seeds."""
    from workbench.recorder import record_run
    from workbench.store import FeatureStore

    seeds = list(range(TRAIN_SEEDS, TRAIN_SEEDS + record_seeds))
    with tempfile.TemporaryDirectory() as tmp:
        out = record_run(pipe, model, Path(tmp) / "run", labels=[s % pipe.num_classes for s in seeds], seeds=seeds,
                         steps=steps, reduction="stats")
        store = FeatureStore.open(out)
        rel = {b: torch.as_tensor(store.stats(b)["rel_l1"]).double().reshape(steps, -1).mean(1) for b in store.blocks}
    return [Method(f"threshold δ={d:g}", "FRDiff threshold (per block)", True, steps,
                   policy=frdiff.threshold_policy(pipe.denoiser, rel, steps, d, source=f"{model} seeds {seeds[0]}-"
                                                  f"{seeds[-1]}"), params={"threshold": d, "record_seeds": seeds})
            for d in thresholds]


def autofr_methods(pipe, model: str, steps: int, targets: tuple[float, ...] | None = None, iterations: int = 30,
                   train_seeds: int = 32, gates=("step", "block"), progress=None) -> list[Method]:
    """Auto-FR policies (feature reuse) learned on ``train_seeds`` seeds from :data:`TRAIN_SEEDS` (disjoint from
    evaluation). ``targets``: compute fractions; default the model's target of ``bench autofr``
    (:data:`workbench.bench_autofr.TARGETS`: between uniform M=3 and M=4, reachable with feature reuse; 0.6 for other
    models)."""
    from frdiff.autofr import AutoFRConfig
    from workbench.bench_autofr import TARGETS
    from workbench.cli_autofr import learn_for_pipeline
    from workbench.compare import measure_savings

    savings = measure_savings(pipe)
    train = list(range(TRAIN_SEEDS, TRAIN_SEEDS + train_seeds))
    targets = targets or (TARGETS.get(model, 0.6),)
    out = []
    for g in gates:
        for target in targets:
            config = AutoFRConfig(gates=g, target_compute=target, iterations=iterations)
            result = learn_for_pipeline(pipe, config, steps, train, savings=savings, model_name=model,
                                        progress=progress)
            out.append(Method(f"Auto-FR per {g}, target {target:g}", f"Auto-FR (per {g})", True, steps,
                              policy=result.policy, params={"gates": g, "target_compute": target,
                                                            "iterations": iterations, "train_seeds":
                                                            f"{train[0]}-{train[-1]}", "train_s": result.seconds}))
    return out


# ---- peers ----------------------------------------------------------------------------------------------------------
def deepcache_package():
    """The published ``DeepCache`` package's helper class and version, or ``(None, reason)``."""
    try:
        from importlib.metadata import version

        from DeepCache import DeepCacheSDHelper
    except ImportError as exc:
        return None, f"the DeepCache package is not installed ({exc})"
    return DeepCacheSDHelper, version("DeepCache")


def deepcache_peer(helper_cls, interval: int, branch: int = 0):
    """The published DeepCache helper (``DeepCacheSDHelper``, UNet only) on one pipeline call.

    Shim: the helper finds the step from ``timestep.item()``, which needs the scalar timestep Stable Diffusion's
    pipeline passes; ours (like diffusers' DiT pipeline) passes one per sample, all equal, so the first is handed on.
    """

    @contextlib.contextmanager
    def peer(pipe):
        if getattr(pipe, "unet", None) is None:
            raise NotApplicable("DeepCacheSDHelper wraps pipe.unet's down/mid/up blocks; this model has no UNet")
        own = {m for m in pipe.unet.modules() if "forward" in vars(m)}
        helper = helper_cls(pipe=pipe)
        helper.set_params(cache_interval=interval, cache_branch_id=branch)
        helper.enable()
        wrapped = pipe.unet.forward

        def scalar_timestep(sample, timestep, *args, **kwargs):
            if torch.is_tensor(timestep) and timestep.ndim > 0:
                timestep = timestep.flatten()[0]
            return wrapped(sample, timestep, *args, **kwargs)

        pipe.unet.forward = scalar_timestep
        try:
            yield
        finally:
            pipe.unet.forward = wrapped
            helper.disable()
            for m in pipe.unet.modules():  # the helper puts the original bound methods back as instance attributes
                if m not in own and "forward" in vars(m):
                    del m.forward

    return peer


def _hook_names(den) -> set[tuple[str, str]]:
    return {(mod_name, hook) for mod_name, mod in den.named_modules()
            for hook in (getattr(getattr(mod, "_diffusers_hook", None), "hooks", None) or {})}


def diffusers_cache_peer(apply_name: str, make_config: Callable):
    """A ``diffusers.hooks`` cache (``apply_<name>``) attached for one pipeline call, with the cache context set
    for the batched CFG call and the current timestep handed to configs that ask for it."""

    @contextlib.contextmanager
    def peer(pipe):
        import diffusers.hooks as hooks
        from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

        den = pipe.denoiser
        current = {"t": 999}

        def note_timestep(_module, args, kwargs):
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            if t is not None:
                current["t"] = int(torch.as_tensor(t).flatten()[0])

        pre = den.register_forward_pre_hook(note_timestep, with_kwargs=True)
        before = _hook_names(den)
        modules = dict(den.named_modules())
        try:
            try:
                getattr(hooks, apply_name)(den, make_config(lambda: current["t"]))
            except Exception as exc:
                raise NotApplicable(f"{apply_name} raised {type(exc).__name__}: {exc}") from None
            added = sorted(_hook_names(den) - before)
            if not [h for h in added if h[0]]:  # only a hook on the denoiser itself: no block is cached
                raise NotApplicable(f"{apply_name} hooks no block of {type(den).__name__}")
            HookRegistry.check_if_exists_or_initialize(den).invalidate_child_registries_cache()
            _set_cache_context(den, CacheContext("cond_uncond"))
            yield
        finally:
            pre.remove()
            with contextlib.suppress(Exception):
                _set_cache_context(den, None)
            for mod_name, hook in sorted(_hook_names(den) - before):
                modules[mod_name]._diffusers_hook.remove_hook(hook, recurse=False)
            HookRegistry.check_if_exists_or_initialize(den).invalidate_child_registries_cache()

    return peer


def _calibrated_mag_ratios(pipe, steps: int, seeds: list[int]) -> list[float]:
    """MagCache's calibration pass (it prints the ratios; they are read back from its output as JSON)."""
    from diffusers.hooks import MagCacheConfig

    peer = diffusers_cache_peer("apply_mag_cache", lambda _t: MagCacheConfig(calibrate=True,
                                                                            num_inference_steps=steps))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run_method(pipe, Method("calibrate", "", False, steps, peer=peer), [s % pipe.num_classes for s in seeds],
                   seeds, batch_size=len(seeds))
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip().startswith("[")]
    if not lines:
        raise NotApplicable("MagCache calibration printed no ratios")
    return [float(x) for x in json.loads(lines[-1])]


def peer_candidates(pipe, steps: int) -> list[tuple[str, str, dict, Callable]]:
    """``(name, family, params, peer factory)`` of every diffusers cache setting tried (before applicability)."""
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        SeaCacheConfig,
        TaylorSeerCacheConfig,
    )

    out = []
    for th in (0.05, 0.1, 0.2):
        out.append((f"FirstBlockCache τ={th:g}", "diffusers FirstBlockCache", {"threshold": th},
                    diffusers_cache_peer("apply_first_block_cache", lambda _t, th=th: FirstBlockCacheConfig(th))))
    for k in (2, 3, 4):
        out.append((f"PyramidAttentionBroadcast skip {k}", "diffusers PyramidAttentionBroadcast",
                    {"spatial_attention_block_skip_range": k, "spatial_attention_timestep_skip_range": [100, 800]},
                    diffusers_cache_peer("apply_pyramid_attention_broadcast", lambda t, k=k:
                                         PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=k,
                                                                         current_timestep_callback=t))))
    for k in (2, 3):
        out.append((f"FasterCache skip {k}", "diffusers FasterCache",
                    {"spatial_attention_block_skip_range": k, "is_guidance_distilled": True},
                    diffusers_cache_peer("apply_faster_cache", lambda t, k=k: FasterCacheConfig(
                        spatial_attention_block_skip_range=k, current_timestep_callback=t,
                        attention_weight_callback=lambda _m: 0.5, is_guidance_distilled=True,
                        tensor_format="BCHW"))))
    for k in (2, 3):
        out.append((f"TaylorSeer interval {k}", "diffusers TaylorSeer",
                    {"cache_interval": k, "cache_identifiers": [r"(.*\.)?transformer_blocks\.\d+"]},
                    diffusers_cache_peer("apply_taylorseer_cache", lambda _t, k=k: TaylorSeerCacheConfig(
                        cache_interval=k, disable_cache_before_step=2, taylor_factors_dtype=torch.float32,
                        cache_identifiers=[r"(.*\.)?transformer_blocks\.\d+"]))))
    mag_ratios: dict = {}

    def mag(th):
        def make(_t):
            return MagCacheConfig(threshold=th, num_inference_steps=steps, mag_ratios=mag_ratios["r"])

        peer = diffusers_cache_peer("apply_mag_cache", make)

        @contextlib.contextmanager
        def calibrated(pipe):
            if "r" not in mag_ratios:
                mag_ratios["r"] = _calibrated_mag_ratios(pipe, steps, list(range(TRAIN_SEEDS, TRAIN_SEEDS + 2)))
            with peer(pipe):
                yield

        return calibrated

    for th in (0.06, 0.12):
        out.append((f"MagCache τ={th:g}", "diffusers MagCache", {"threshold": th, "calibration_seeds": "1000-1001"},
                    mag(th)))
    out.append(("SeaCache", "diffusers SeaCache", {},
                diffusers_cache_peer("apply_sea_cache", lambda _t: SeaCacheConfig())))
    return out


def _no_op(pipe, peer, steps: int) -> str | None:
    """Why ``peer`` does nothing on ``pipe`` (it runs but the images equal the stock run's), else ``None``."""
    seeds, labels = [TRAIN_SEEDS], [TRAIN_SEEDS % pipe.num_classes]
    stock, _ = run_method(pipe, Method("stock", "", False, steps), labels, seeds)
    cached, _ = run_method(pipe, Method("peer", "", False, steps, peer=peer), labels, seeds)
    if torch.equal(stock.images, cached.images):
        return "runs, but its images equal the stock run's on a probe seed (it skips nothing here)"
    return None


def peer_methods(pipe, steps: int, deepcache: bool = True) -> tuple[list[Method], list[dict]]:
    """The peers that run on ``pipe`` and, for each that does not, ``{"name", "family", "reason"}``."""
    den = pipe.denoiser
    methods, skipped = [], []
    helper, info = deepcache_package() if deepcache else (None, "not requested")
    for m in DEEPCACHE_INTERVALS:
        methods.append(Method(f"DeepCache preset N={m}", "DeepCache (frdiff preset)", False, steps,
                              policy=make_preset("deepcache", den, steps, interval=m), params={"interval": m}))
    if helper is None:
        skipped.append({"name": "DeepCache (published package)", "family": "DeepCache (package)", "reason": info})
    elif getattr(pipe, "unet", None) is None:
        skipped.append({"name": f"DeepCache {info} (published package)", "family": "DeepCache (package)",
                        "reason": "DeepCacheSDHelper wraps a UNet's down/mid/up blocks; this model is a transformer"})
    else:
        for m in DEEPCACHE_INTERVALS:
            methods.append(Method(f"DeepCache {info} N={m}", "DeepCache (package)", False, steps,
                                  peer=deepcache_peer(helper, m), params={"cache_interval": m, "cache_branch_id": 0,
                                                                          "package_version": info}))
    probed: dict[str, str | None] = {}
    for name, family, params, peer in peer_candidates(pipe, steps):
        if family not in probed:
            try:
                probed[family] = _no_op(pipe, peer, steps)
            except NotApplicable as exc:
                probed[family] = str(exc)
        if probed[family] is not None:
            if not any(s["family"] == family for s in skipped):
                skipped.append({"name": family, "family": family, "reason": probed[family]})
            continue
        methods.append(Method(name, family, False, steps, peer=peer, params=params))
    return methods, skipped


def first_of_each_family(methods: list[Method], k: int, keep_two: tuple[str, ...] = ()) -> list[Method]:
    """The first ``k`` methods of every family (two of the families in ``keep_two``), in order."""
    seen: dict[str, int] = {}
    out = []
    for m in methods:
        seen[m.family] = seen.get(m.family, 0) + 1
        if seen[m.family] <= (max(k, 2) if m.family in keep_two else k):
            out.append(m)
    return out


# ---- suites ---------------------------------------------------------------------------------------------------------
def _device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _env(device: str) -> dict:
    from workbench.bench import machine_info

    info = machine_info()
    info["device"] = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return info


def bench_quality_latency(repeats: int = 1, seeds: int = 64, models: tuple[str, ...] = ("tiny-unet", "tiny-dit"),
                          steps: int = REFERENCE_STEPS, device: str | None = None, autofr: bool = True,
                          autofr_iterations: int = 30, autofr_train_seeds: int = 32, autofr_targets=None,
                          thresholds=THRESHOLDS, peers: bool = True, flop_seeds: int = 4, batch_size: int = 64,
                          small: bool = False, progress=None) -> dict:
    """The ``quality-vs-latency`` suite (module docstring). ``small`` keeps the first setting of each method family
    (two of fewer DDIM steps and reduced NFE): the CI smoke size."""
    from workbench.zoo import load_pipeline

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
        den = pipe.denoiser
        methods = stock_methods(steps) + frdiff_methods(den, steps)
        if thresholds:
            methods += threshold_methods(pipe, model, steps, thresholds)
        if autofr:
            methods += autofr_methods(pipe, model, steps, autofr_targets, autofr_iterations, autofr_train_seeds)
        skipped: list[dict] = []
        if peers:
            more, skipped = peer_methods(pipe, steps)
            methods += more
        if small:
            methods = first_of_each_family(methods, 1, keep_two=("DDIM (fewer steps)", "reduced NFE (output reuse)"))
        labels = [s % pipe.num_classes for s in eval_seeds]
        result = measure(pipe, methods, labels, eval_seeds, steps, repeats, flop_seeds, batch_size, progress)
        skipped += result.pop("failed")
        report["models"][model] = {"denoiser": type(den).__name__, **result, "not_applicable": skipped,
                                   "autofr": "run" if autofr else "skipped (--no-autofr)"}
        del pipe
    return report


SCHEDULER_VARIANTS = [("reduced NFE M=2", "reduced-nfe", 2, False), ("FR M=2", "uniform", 2, False),
                      ("FR M=2 + mixing", "uniform", 2, True), ("FR M=3", "uniform", 3, False)]


def bench_schedulers(repeats: int = 1, seeds: int = 64, models: tuple[str, ...] = ("tiny-unet", "tiny-dit"),
                     steps: tuple[int, ...] = (20, 50), schedulers: tuple[str, ...] = ("ddim", "dpmpp", "euler",
                                                                                      "unipc"),
                     device: str | None = None, progress=None) -> dict:
    """The ``schedulers`` suite: per model, step count and scheduler, FR variants and the stock scheduler at half
    the steps against the full run of that scheduler, from the same seeds."""
    from workbench.compare import Variant, compare
    from workbench.zoo import load_pipeline

    device = _device(device)
    report = {"suite": "schedulers", "machine": _env(device), "steps": list(steps), "schedulers": list(schedulers),
              "seeds": f"0-{seeds - 1}", "n": seeds, "repeats": repeats, "models": {}}
    for model in models:
        pipe = load_pipeline(model, device=device)
        pipe.set_progress_bar_config(disable=True)
        labels = [s % pipe.num_classes for s in range(seeds)]
        entry: dict = {}
        for n_steps in steps:
            for sched in schedulers:
                variants = [Variant(f"{sched} {n_steps // 2} steps", None, steps=n_steps // 2)]
                variants += [Variant(label, make_preset(preset, pipe.denoiser, n_steps, scheduler=sched, interval=m,
                                                        mix=mix)) for label, preset, m, mix in SCHEDULER_VARIANTS]
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
    from workbench.bench import bench_analysis, bench_record_overhead

    steps = 6 if small else 50
    repeats = 1 if small else repeats
    report = {"suite": "overhead", "machine": _env(device), "small": small, "steps": steps, "repeats": repeats,
              "record_overhead": bench_record_overhead(repeats=repeats, device=device, steps=steps),
              "analysis": bench_analysis(repeats=repeats, device=device, steps=steps)}
    if app and not small:
        from workbench.bench_app import bench_app_startup, browser_missing

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
