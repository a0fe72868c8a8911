"""``bench gpu-speed``: how fast the engine's reuse steps are on real-size architectures, and how close end-to-end
runs get to the speedup predicted from FLOPs.

Models (random weights: speed does not depend on training):
- ``sd15-unet``: Stable Diffusion 1.5's UNet architecture (``UNet2DConditionModel``, 860 M parameters) at 512 px
  (64×64 latents), one image with CFG (UNet batch 2), 77 context tokens of width 768, fp16 on CUDA.
- ``dit-xl-2``: DiT-XL/2 (``DiTTransformer2DModel``, 28 blocks of width 1152, patch 2) at 256 px (32×32 latents),
  one image with CFG, fp16.
``small=True`` (the CPU variant and the CI smoke test) uses the same block types at a fraction of the size.

Per model: the FLOP share a reuse step skips; the time of a full denoiser call and of a reuse call (all blocks
reusing, same inputs); end-to-end 50-step DDIM runs of ``none``, uniform M=2 and M=3 ± mixing, and M=3 with
taylor2 forecasts ± mixing (median of ``repeats``, interleaved), their measured speedup next to the FLOP prediction
and to the prediction from the measured per-step ratio; optionally the same under ``torch.compile``.
"""

from __future__ import annotations

import gc
import statistics
import time

import torch

import frdiff
from frdiff import make_preset
from frdiff.blocks import capture_denoiser_call
from workbench.models.pipeline import ClassTokenEncoder, ShapesPipeline

VARIANTS = [("uniform M=2", dict(preset="uniform", interval=2)),
            ("uniform M=2 + mixing", dict(preset="uniform", interval=2, mix=True)),
            ("uniform M=3", dict(preset="uniform", interval=3)),
            ("uniform M=3 + mixing", dict(preset="uniform", interval=3, mix=True)),
            # the forecast mode's cost: each reuse step forecasts every reusing block from its last three keyframes
            ("uniform M=3 taylor2", dict(preset="uniform", interval=3, reuse="taylor2")),
            ("uniform M=3 taylor2 + mixing", dict(preset="uniform", interval=3, mix=True, reuse="taylor2"))]


def _sd15_unet(small: bool):
    from diffusers import UNet2DConditionModel

    if small:
        return UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64, 64, 64), layers_per_block=2,
                                    cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32), 64, 16
    return UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                cross_attention_dim=768, attention_head_dim=8), 768, 77


def _dit_xl2(small: bool):
    from diffusers import DiTTransformer2DModel

    if small:
        return DiTTransformer2DModel(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
                                     num_layers=4, sample_size=16, patch_size=2, num_embeds_ada_norm=1000)
    return DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                 num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)


def build(name: str, device: torch.device, dtype: torch.dtype, small: bool = False,
          channels_last: bool = False) -> ShapesPipeline:
    """A pipeline around a randomly initialised real-size (or ``small``) denoiser; weights made on ``device``.
    ``channels_last``: the denoiser's 4-d weights in channels-last layout (convolutions then run NHWC: on a GPU,
    cuDNN's tensor-core kernels for small batches; an experiment for the UNet's short reuse steps)."""
    from diffusers import DDIMScheduler

    torch.manual_seed(0)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          timestep_spacing="trailing")
    with torch.device(device):
        if name == "sd15-unet":
            unet, dim, tokens = _sd15_unet(small)
            enc = ClassTokenEncoder(num_classes=1, num_tokens=tokens, dim=dim)
            pipe = ShapesPipeline(scheduler=sched, unet=unet, class_encoder=enc, default_guidance_scale=7.5)
        elif name == "dit-xl-2":
            pipe = ShapesPipeline(scheduler=sched, transformer=_dit_xl2(small), default_guidance_scale=4.0)
        else:
            raise ValueError(f"unknown model {name!r}")
    pipe.to(device=device, dtype=dtype)
    if channels_last:
        pipe.denoiser.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    pipe.denoiser.train(False).requires_grad_(False)
    return pipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# How gpu-speed's timed calls run, recorded with each JSON: ``bench report`` marks the runs measured before these
# (the pipeline then handed DDIM GPU timesteps, a host sync every step; the garbage collector ran inside timed calls).
TIMING = {"scheduler_timesteps": "cpu (no host sync per DDIM step)", "garbage_collector": "off during timed calls"}


def _timed(fn, device) -> float:
    """Wall time of ``fn()`` from an idle device to an idle device, with Python's cyclic garbage collector held off
    during the call, as ``timeit`` does: once compiled graphs have grown the heap (700 k objects after compiling the
    small DiT-XL/2 here), a full collection takes hundreds of milliseconds on this CPU and would land in whichever
    variant's run allocation happened to trigger it. Collections run between the timed calls instead."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0
    finally:
        if was_enabled:
            gc.enable()


@torch.no_grad()
def step_times(pipe, device, n: int = 20) -> dict:
    """Median seconds of a full denoiser call and of a reuse call (all blocks reuse, feature granularity)."""
    den = pipe.denoiser
    args, kwargs = capture_denoiser_call(pipe, lambda: pipe([0], num_inference_steps=2, output_type="pt"))
    for _ in range(3):
        den(*args, **kwargs)
    full = [_timed(lambda: den(*args, **kwargs), device) for _ in range(n)]
    policy = make_preset("uniform", den, n + 1, interval=n + 1)
    with frdiff.apply(den, policy, check_model=False):
        den(*args, **kwargs)  # step 0: the keyframe fills the caches
        reuse = [_timed(lambda: den(*args, **kwargs), device) for _ in range(n)]
    t_full, t_reuse = statistics.median(full), statistics.median(reuse)
    return {"full_step_s": t_full, "reuse_step_s": t_reuse, "reuse_over_full": t_reuse / t_full}


OP_KINDS = (("attention", ("scaled_dot_product", "flash", "efficient_attention", "bmm", "softmax")),
            ("convolution", ("conv",)), ("norm", ("group_norm", "layer_norm", "norm")),
            ("linear", ("addmm", "mm", "linear", "matmul")))


def op_kind(name: str) -> str:
    """The kind of a profiled op, by name: attention, convolution, norm, linear, or other (element-wise, copies)."""
    lowered = name.lower()
    return next((kind for kind, keys in OP_KINDS if any(k in lowered for k in keys)), "other")


@torch.no_grad()
def profile_steps(pipe, device) -> dict:
    """Where a full and a reuse denoiser call spend their time, by kind of op (``torch.profiler``: the device time
    of each op's own kernels on CUDA, its own CPU time on the CPU; one call each after a warm-up): the check of the
    FLOP prediction's premise, that a reuse step's time shrinks as its FLOPs do."""
    from torch.profiler import ProfilerActivity, profile

    den = pipe.denoiser
    args, kwargs = capture_denoiser_call(pipe, lambda: pipe([0], num_inference_steps=2, output_type="pt"))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def by_kind(call) -> dict:
        for _ in range(2):
            call()
        _sync(device)
        with profile(activities=activities) as prof:
            call()
            _sync(device)
        out: dict[str, float] = {}
        for ev in prof.key_averages():
            if ev.key.startswith("aten::") and getattr(ev, key) > 0:
                kind = op_kind(ev.key)
                out[kind] = out.get(kind, 0.0) + getattr(ev, key) / 1e3  # µs -> ms
        return {k: out[k] for k in sorted(out)} | {"total": sum(out.values())}

    full = by_kind(lambda: den(*args, **kwargs))
    policy = make_preset("uniform", den, 4, interval=4)
    with frdiff.apply(den, policy, check_model=False):
        den(*args, **kwargs)  # step 0: the keyframe fills the caches; steps 1-3 reuse
        reuse = by_kind(lambda: den(*args, **kwargs))
    return {"unit": "ms", "clock": "device" if device.type == "cuda" else "cpu", "full": full, "reuse": reuse}


MODES = ("eager", "regional", "cuda-graphs", "step-graphs", "full", "full-step-graphs")
APPLY_MODES = {"eager": {}, "regional": {"compile": "regional"},
               "cuda-graphs": {"compile": "regional", "cuda_graphs": "blocks"},
               "step-graphs": {"compile": "regional", "cuda_graphs": "step"},
               "full": {"compile": "full"},
               "full-step-graphs": {"compile": "full", "cuda_graphs": "step"},
               "peers-compiled": {}}  # the peers over diffusers-style regional compilation (no FRDiff variant)
COMPILE_CHOICES = ("off", "regional", "full", "wrapped")


def compile_list(compile: str) -> list[str]:
    """``--compile``'s comma list, checked."""
    chosen = [c.strip() for c in str(compile).split(",") if c.strip()]
    if not chosen or any(c not in COMPILE_CHOICES for c in chosen):
        raise ValueError(f"compile must be off, regional, full or wrapped (or a comma list), got {compile!r}")
    return chosen


def gpu_speed_modes(compile: str, cuda_graphs) -> list[str]:
    """The modes a ``gpu-speed`` run measures beside eager: each of ``compile``'s (a comma list of ``regional``,
    ``full``; ``off`` and ``wrapped`` add none here) and, with ``cuda_graphs``, the CUDA-graph modes over them:
    ``blocks`` the regional graphs under CUDA graph trees (``cuda-graphs``), ``step`` whole steps captured over the
    regional blocks (``step-graphs``) or over the whole-call graphs (``full-step-graphs``), ``both`` blocks and step."""
    chosen = compile_list(compile)
    graph_modes = {False: (), True: ("blocks",), "blocks": ("blocks",), "step": ("step",), "both": ("blocks", "step")}
    if cuda_graphs not in graph_modes:
        raise ValueError(f"cuda_graphs must be blocks, step or both, got {cuda_graphs!r}")
    wanted = graph_modes[cuda_graphs]
    if wanted and not {"regional", "full"} & set(chosen):
        raise ValueError("--cuda-graphs captures compiled graphs: use it with --compile regional or full")
    if "blocks" in wanted and "regional" not in chosen:
        raise ValueError("--cuda-graphs blocks captures the regional graphs: use it with --compile regional")
    modes = []
    for c in ("regional", "full"):
        if c in chosen:
            modes.append(c)
            if c == "regional" and "blocks" in wanted:
                modes.append("cuda-graphs")
            if "step" in wanted:
                modes.append("step-graphs" if c == "regional" else "full-step-graphs")
    return modes


@torch.no_grad()
def end_to_end(pipe, device, steps: int, repeats: int, savings: dict, ratio: float, mode: str = "eager",
               backend: str = "inductor", images: int = 1, peers: dict | None = None,
               forecasts: bool = True, compile_options: dict | None = None) -> list[dict]:
    """50-step runs of the reference and each variant, in a shuffled order each round (so no variant always
    follows another); speedups against the reference. On CUDA each step's time inside the run is also taken from
    events recorded at step ends (no syncs), giving the median time of full, FR and skipped steps in situ.

    ``mode``: ``eager``, or one of frdiff's compile and CUDA-graph modes (:data:`APPLY_MODES`), where the reference
    is the no-reuse policy in the same mode — the stock model compiled (and captured) alike — and every variant
    first runs once untimed (``warmup_s``: compiling and capturing); ``recompiles`` counts the
    graphs compiled, captures, and frames dynamo failed to compile (past its recompile limit they run eagerly)
    during the timed runs; ``eager_fallbacks`` the frames dynamo gave up on, warm-up included.
    ``peak_memory_bytes``: CUDA's peak allocation over the variant's runs.
    ``images``: images per pipeline call (CFG doubles the denoiser's batch). ``peers``: ``{label: peer factory}``
    (:mod:`workbench.bench.peers`: another library's cache attached for one call), timed in the same interleaved
    rounds; a peer that raises on entry is reported with its error instead of a time. ``forecasts``: also the
    taylor2 variants of :data:`VARIANTS` (under compilation they are a third graph structure to compile). Mode
    ``peers-compiled`` times stock and the peers only (no FRDiff variant), inside
    :func:`workbench.bench.peers.compiled_repeated_blocks`. ``compile_options``: inductor's, for frdiff's compile
    modes (:func:`frdiff.apply`'s)."""
    import random

    from torch._dynamo.utils import counters

    from frdiff.compiling import graphs_compiled

    def failed_frames():  # frames dynamo gave up on (past its recompile limit, say): they run eagerly from then on
        return counters["frames"]["total"] - counters["frames"]["ok"]

    def compiles():  # graphs compiled, and frames dynamo failed to compile
        return graphs_compiled() + failed_frames()

    den = pipe.denoiser
    kwargs = {**APPLY_MODES[mode], "backend": backend, "compile_options": compile_options} if APPLY_MODES[mode] \
        else {}
    compiled = mode != "eager"  # compiles (warm-up apart, recompiles counted): frdiff's modes, or peers-compiled
    variants = [] if mode == "peers-compiled" else VARIANTS
    policies = {label: make_preset(kw["preset"], den, steps, interval=kw["interval"], mix=kw.get("mix", False),
                                   reuse=kw.get("reuse", "hold"))
                for label, kw in variants if forecasts or kw.get("reuse", "hold") == "hold"}
    if kwargs:
        policies = {"none": make_preset("none", den, steps), **policies}
    peers = dict(peers or {})
    per_step: dict[str, dict[str, list[float]]] = {"none": {}, **{label: {} for label in [*policies, *peers]}}
    peak: dict[str, int] = {}
    recompiles: dict[str, int] = {}
    fallbacks: dict[str, int] = {}  # frames dynamo gave up on, warm-up included (a compiled mode running eagerly)
    labels = [0] * images

    def run(label, timed=True):
        policy = policies.get(label)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        graphs, failed = (compiles(), failed_frames()) if compiled else (0, 0)
        captured = 0
        gen = torch.Generator("cpu").manual_seed(0)
        events = []

        def on_step(_pipe, _i, _t, tensors):
            if device.type == "cuda":
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                events.append(ev)
            return tensors

        def call():
            if device.type == "cuda":
                start = torch.cuda.Event(enable_timing=True)
                start.record()
                events.append(start)
            pipe(labels, num_inference_steps=steps, generator=gen, output_type="pt", callback_on_step_end=on_step)

        if label in peers:
            with frdiff.exclusive(pipe), peers[label](pipe):
                elapsed = _timed(call, device)
            kinds = ["full"] * steps  # a peer decides per step at run time: its in-run step times are not split
        elif policy is None:
            elapsed = _timed(call, device)
            kinds = ["full"] * steps
        else:
            with frdiff.apply(pipe, policy, **kwargs) as applied:
                elapsed = _timed(call, device)
            kinds = policy.step_kinds()
            captured = sum(applied.report().captures_per_run)
        if compiled:
            fallbacks[label] = fallbacks.get(label, 0) + failed_frames() - failed
        if timed:
            recompiles[label] = recompiles.get(label, 0) + (compiles() - graphs + captured if compiled else 0)
            if device.type == "cuda":
                peak[label] = max(peak.get(label, 0), torch.cuda.max_memory_allocated(device))
        if timed and len(events) == steps + 1:
            for kind, a, b in zip(kinds, events[:-1], events[1:], strict=True):
                per_step[label].setdefault(kind, []).append(a.elapsed_time(b) / 1000)
        return elapsed

    warmup = {label: run(label, timed=False) for label in (policies if kwargs else ["none"])}
    failed: dict[str, str] = {}
    for label in list(peers):  # one untimed call each: a peer that does not run here is reported, not timed
        try:
            warmup[label] = run(label, timed=False)
        except Exception as exc:  # another library's cache failing on this model is a result, not a crash
            failed[label] = f"{type(exc).__name__}: {str(exc)[:300]}"
            del peers[label]
    times: dict[str, list[float]] = {"none": [], **{label: [] for label in [*policies, *peers]}}
    order = list(times)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for label in order:
            times[label].append(run(label))
    ref = statistics.median(times["none"])

    frdiff.release_step_graphs(pipe)  # the next mode or image count captures its own

    def in_situ(label):
        return {k: statistics.median(v) for k, v in per_step[label].items()} if per_step[label] else None

    def extra(label):
        return {"mode": mode, "median_s": statistics.median(times[label]), "recompiles": recompiles.get(label, 0),
                "eager_fallbacks": fallbacks.get(label) if compiled else None,
                "warmup_s": warmup.get(label) if compiled else None, "peak_memory_bytes": peak.get(label)}

    rows = [{"variant": "none", "images": images, "latency_s": ref, "speedup": 1.0, "speedup_vs_stock_same_mode": 1.0,
             "predicted_speedup": 1.0, "predicted_from_step_ratio": 1.0, "denoiser_calls": steps,
             "step_s_in_run": in_situ("none"), **extra("none")}]
    for label, policy in policies.items():
        if label == "none":
            continue
        latency = statistics.median(times[label])
        kinds = policy.step_kinds()
        by_ratio = steps / sum(1.0 if k == "full" else 0.0 if k == "skip" else ratio for k in kinds)
        predicted = frdiff.predicted_speedup(policy, savings)
        rows.append({"variant": label, "images": images, "latency_s": latency, "speedup": ref / latency,
                     "speedup_vs_stock_same_mode": ref / latency, "predicted_speedup": predicted,
                     "measured_over_predicted": (ref / latency) / predicted,
                     "predicted_from_step_ratio": by_ratio, "denoiser_calls": policy.denoiser_calls(),
                     "step_s_in_run": in_situ(label), **extra(label)})
    for label in peers:
        latency = statistics.median(times[label])
        rows.append({"variant": label, "images": images, "peer": True, "latency_s": latency, "speedup": ref / latency,
                     "speedup_vs_stock_same_mode": ref / latency, "predicted_speedup": None,
                     "predicted_from_step_ratio": None, "denoiser_calls": None, "step_s_in_run": None,
                     **extra(label)})
    rows += [{"variant": label, "images": images, "peer": True, "mode": mode, "error": err}
             for label, err in failed.items()]
    return rows


_T0 = time.perf_counter()


def _log(what: str) -> None:
    """Progress on stderr (a long GPU run shows where its time goes; the JSON stays on stdout)."""
    import sys

    print(f"[gpu-speed {time.perf_counter() - _T0:7.1f} s] {what}", file=sys.stderr, flush=True)


SPEED_PEERS = ("FirstBlockCache τ=0.1", "TaylorSeer interval 2", "TaylorSeer interval 3")


def speed_peers(pipe, steps: int) -> dict:
    """The peers timed next to FRDiff in ``gpu-speed`` (eager; their hooks decide per step in Python): the published
    DeepCache package at N = 2, 3 (UNets) and, of the quality benchmarks' diffusers caches
    (:func:`workbench.bench.peers.peer_candidates`, the same settings), :data:`SPEED_PEERS`."""
    from workbench.bench.peers import deepcache_package, deepcache_peer, peer_candidates

    out = {}
    helper, version = deepcache_package()
    if helper is not None and getattr(pipe, "unet", None) is not None:
        out.update({f"DeepCache {version} N={n}": deepcache_peer(helper, n) for n in (2, 3)})
    out.update({name: peer for name, _, _, peer in peer_candidates(pipe, steps) if name in SPEED_PEERS})
    return out


def bench_gpu_speed(repeats: int = 5, small: bool | None = None, models: tuple[str, ...] = ("sd15-unet", "dit-xl-2"),
                    steps: int = 50, compile: str | bool = "off", cuda_graphs: bool = False,
                    backend: str = "inductor", images: tuple[int, ...] = (1,), peers: bool = True,
                    checkpoint=None, channels_last: bool = False, profile: bool = False,
                    forecasts: bool = True, peers_compiled: bool = False,
                    compile_options: dict | None = None) -> dict:
    """The ``gpu-speed`` suite. On a machine without CUDA it runs the ``small`` CPU variant.

    compile: ``off`` (eager only), or a comma list of frdiff's compile modes — ``regional`` (each block a compiled
    graph: ``modes.regional``), ``full`` (each step configuration one compiled graph of the whole call:
    ``modes.full``) — and ``wrapped`` (``denoiser.compile()`` around the eager hooks, which break the graph at every
    hooked block: ``compiled``). cuda_graphs: also the regional graphs captured as CUDA graphs (``"blocks"``:
    ``modes["cuda-graphs"]``), whole steps captured as CUDA graphs over each compile mode (``"step"``:
    ``modes["step-graphs"]`` over regional, ``modes["full-step-graphs"]`` over full), or ``"both"``
    (:func:`gpu_speed_modes`). A capture during the timed runs counts as a recompile. backend: torch.compile's
    backend for frdiff's compile modes (tests use ``eager``). images: images per call, each measured in every mode.
    peers: time :func:`speed_peers` beside the eager variants. channels_last: the denoisers' weights in channels-last
    layout (:func:`build`), every variant and mode alike. profile: also where a full and a reuse call spend their time
    by kind of op (:func:`profile_steps`: ``models.M.profile``). forecasts: also the taylor2 variants (without
    them a compile mode compiles two graph structures, not three: a GPU session's time). peers_compiled: also the
    peers in their compiled mode (``peers-compiled``: stock and each peer over diffusers' regional compilation,
    :func:`workbench.bench.peers.compiled_repeated_blocks`; speedups against stock compiled so). compile_options:
    inductor's options for every compiled mode of the run (``{"cpp_wrapper": True}``), the peers' included
    (:func:`frdiff.apply`'s ``compile_options``; recorded in the JSON). checkpoint: called with
    the report so far (marked ``partial``) before each mode and after each model and image count, so a run stopped
    at a time limit keeps what it measured.

    ``rows``: one flat row per (model, images, mode, variant) with ``speedup_vs_stock_same_mode`` and
    ``speedup_vs_eager_stock`` (against the eager stock run of the same model and image count)."""
    from frdiff.compiling import check_compile_options
    from workbench.bench.peers import compiled_repeated_blocks

    compile = {True: "wrapped", False: "off"}.get(compile, compile)
    modes = gpu_speed_modes(compile, cuda_graphs)
    compile_options = check_compile_options(next((m for m in modes if m in ("regional", "full")), "off"), backend,
                                            compile_options)  # refused now, not in each mode's first apply
    if cuda_graphs and not torch.cuda.is_available():
        raise ValueError("--cuda-graphs needs a CUDA device; this machine has none")
    if peers_compiled and not peers:
        raise ValueError("--peers-compiled times the peers compiled; it cannot go with --no-peers")
    unknown = [m for m in models if m not in ("sd15-unet", "dit-xl-2")]
    if unknown:
        raise ValueError(f"gpu-speed models are sd15-unet and dit-xl-2, got {', '.join(unknown)}")
    if not images or any(n < 1 for n in images):
        raise ValueError(f"images must be positive counts, got {images}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = (device.type != "cuda") if small is None else small
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    report = {"suite": "gpu-speed", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "compile": compile, "cuda_graphs": cuda_graphs,
              "dtype": str(dtype).replace("torch.", ""), "small": small, "steps": steps, "images": list(images),
              "repeats": repeats, "channels_last": channels_last, "forecasts": forecasts,
              "peers_compiled": peers_compiled, "compile_options": compile_options, "timing": TIMING,
              "models": {}, "rows": []}
    for name in models:
        pipe = build(name, device, dtype, small, channels_last)
        args, kwargs = capture_denoiser_call(pipe, lambda pipe=pipe: pipe([0], num_inference_steps=1,
                                                                          output_type="pt"))
        savings = frdiff.measure_savings(pipe.denoiser, "feature", *args, **kwargs)
        saved = sum(savings["feature"].values())
        st = step_times(pipe, device)
        entry = {"parameters": sum(p.numel() for p in pipe.denoiser.parameters()), "reuse_flop_share": saved,
                 "predicted_reuse_over_full": 1 - saved, **st, "by_images": {}}
        for n in images:
            _log(f"{name}: {n} images, eager")
            eager = end_to_end(pipe, device, steps, repeats, savings, st["reuse_over_full"], images=n,
                               peers=speed_peers(pipe, steps) if peers else None, forecasts=forecasts)
            per_mode = {"eager": eager}
            stock = eager[0]["latency_s"]
            assert eager[0]["variant"] == "none"

            def rows_so_far(per_mode=per_mode, stock=stock, name=name):
                rows = []
                for mode, found in per_mode.items():
                    for r in found:
                        r.setdefault("mode", mode)
                        if "latency_s" in r:
                            r["speedup_vs_eager_stock"] = stock / r["latency_s"]
                        rows.append({"model": name, **r})
                return rows

            for m in modes + (["peers-compiled"] if peers_compiled else []):
                if checkpoint is not None:  # each finished mode is kept if a time limit stops the next one
                    checkpoint({**report, "rows": report["rows"] + rows_so_far(), "partial": True})
                _log(f"{name}: {n} images, {m}")
                try:
                    if m == "peers-compiled":  # stock and the peers, their blocks compiled as diffusers does
                        with compiled_repeated_blocks(pipe.denoiser, backend, compile_options):
                            per_mode[m] = end_to_end(pipe, device, steps, repeats, savings, st["reuse_over_full"],
                                                     mode=m, images=n, peers=speed_peers(pipe, steps))
                    else:
                        per_mode[m] = end_to_end(pipe, device, steps, repeats, savings, st["reuse_over_full"],
                                                 mode=m, backend=backend, images=n, forecasts=forecasts,
                                                 compile_options=compile_options)
                except Exception as exc:  # a mode failing at one size is a result; the other modes still run
                    import traceback

                    _log(traceback.format_exc())
                    per_mode[m] = [{"variant": "all", "images": n, "mode": m,
                                    "error": f"{type(exc).__name__}: {str(exc)[:300]}"}]
                    frdiff.release_step_graphs(pipe)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
            report["rows"] += rows_so_far()
            entry["by_images"][str(n)] = per_mode
            if n == images[0]:  # the layout earlier reports (and the summary) read
                entry["end_to_end"] = eager
                if modes:
                    entry["modes"] = {m: per_mode[m] for m in modes}
            report["models"][name] = entry
            if checkpoint is not None:
                checkpoint({**report, "rows": list(report["rows"]), "partial": True})
        if profile:  # after the timed runs: a CUDA profiling session can leave CUPTI slowing what follows
            entry["profile"] = profile_steps(pipe, device)
        if "wrapped" in compile_list(compile):
            entry["compiled"] = _compiled(pipe, device, steps, repeats, savings)
        report["models"][name] = entry
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return report


def _compiled(pipe, device, steps, repeats, savings) -> dict:
    """The same under ``torch.compile`` of the denoiser (hooks stay Python-side; see docs/engine.md)."""
    try:
        pipe.denoiser.compile()
        t0 = time.perf_counter()
        st = step_times(pipe, device)
        rows = end_to_end(pipe, device, steps, max(2, repeats // 2), savings, st["reuse_over_full"])
        return {"works": True, "compile_and_run_s": time.perf_counter() - t0, **st, "end_to_end": rows}
    except Exception as exc:  # report, don't hide: compile support is one of the questions this suite answers
        return {"works": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}


QUALITY_VARIANTS = [
    ("reduced-nfe M=2", dict(preset="reduced-nfe", interval=2)),  # at 50 steps: 25 calls = DDIM 25 steps
    ("reduced-nfe M=3", dict(preset="reduced-nfe", interval=3)),  # 17 calls = DDIM 17 steps
    ("FR M=2", dict(preset="uniform", interval=2)),
    ("FR M=2 + mixing", dict(preset="uniform", interval=2, mix=True)),
    ("FR M=3", dict(preset="uniform", interval=3)),
    ("FR M=3 + mixing", dict(preset="uniform", interval=3, mix=True)),
    ("deepcache M=3", dict(preset="deepcache", interval=3)),
]
SCHEDULER_VARIANTS = ["reduced-nfe M=2", "FR M=2", "FR M=2 + mixing", "FR M=3"]


def bench_engine_quality(repeats: int = 1, seeds: int = 64, models: tuple[str, ...] = ("tiny-unet", "tiny-dit"),
                         steps: int = 50, schedulers: tuple[str, ...] = ("ddim", "dpmpp", "euler", "unipc"),
                         scheduler_seeds: int | None = None, progress=None) -> dict:
    """The paper's comparison on the shipped models: every variant against the full ``steps``-step run from the
    same ``seeds`` (classes cycling), under DDIM; then a subset of variants under each of ``schedulers``.

    A text-to-image model (``tiny-sd``) samples the scene judge's evaluation captions
    (:func:`workbench.models.scenes.eval_prompts`, caption i for seed i) and its DDIM entry has two additions, the
    rest of the paper's SD comparison: ``equal_compute``, plain DDIM at the step count whose compute equals each of
    FR M=2 and FR M=2 + mixing (``round(steps / predicted speedup)``; reduced NFE M=2 and M=3 already stand at
    FR M=3 + mixing's and beyond), and ``error_spectra`` with ``band_errors`` (mean error power in the lowest and
    highest third of the radial frequencies, :mod:`workbench.analysis.frequency`) of every variant against the
    reference: fewer steps keep low frequencies, FR keeps high ones, says the paper."""
    from workbench.bench.methods import seed_conditions
    from workbench.compare import Variant, compare, measure_savings
    from workbench.conditions import takes_prompts
    from workbench.models.zoo import load_pipeline

    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"suite": "engine-quality", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "torch": torch.__version__, "steps": steps, "seeds": seeds, "repeats": repeats, "models": {}}
    for name in models:
        pipe = load_pipeline(name, device=device)
        pipe.set_progress_bar_config(disable=True)
        prompts = takes_prompts(pipe)
        labels = seed_conditions(pipe, list(range(seeds)))  # classes cycling, or scene caption i for seed i

        def variants(sched, only=None, pipe=pipe):
            out = []
            for label, kw in QUALITY_VARIANTS:
                if only is None or label in only:
                    pol = make_preset(kw["preset"], frdiff.denoiser_of(pipe), steps, scheduler=sched,
                                      interval=kw["interval"], mix=kw.get("mix", False))
                    out.append(Variant(label, pol, scheduler=sched))
            return out

        main_variants = variants("ddim")
        if prompts:
            main_variants += equal_compute_variants(main_variants, measure_savings(pipe, condition=labels[0]), steps)
        main = compare(pipe, main_variants, labels, list(range(seeds)), steps=steps, scheduler="ddim",
                       repeats=repeats, progress=progress, keep_images=prompts)
        main.pop("savings")
        if prompts:
            add_error_spectra(main)
        entry = {"ddim": main, "schedulers": {}}
        if prompts:
            entry["prompts"] = "workbench.models.scenes.eval_prompts(seeds): caption i for seed i"
        n_s = scheduler_seeds or seeds
        for sched in schedulers:
            res = compare(pipe, variants(sched, SCHEDULER_VARIANTS), labels[:n_s], list(range(n_s)), steps=steps,
                          scheduler=sched, repeats=1, progress=progress)
            res.pop("savings")
            entry["schedulers"][sched] = res
        report["models"][name] = entry
    return report


EQUAL_COMPUTE_OF = ("FR M=2", "FR M=2 + mixing")


def equal_compute_variants(variants: list, savings: dict, steps: int) -> list:
    """Plain DDIM at the compute of each of :data:`EQUAL_COMPUTE_OF`: ``round(steps / predicted speedup)`` steps
    (no two at the same count, none at a count a reduced-NFE variant already runs)."""
    from workbench.compare import Variant

    taken = {v.policy.denoiser_calls() for v in variants if v.name.startswith("reduced-nfe")}
    out = []
    for v in variants:
        if v.name in EQUAL_COMPUTE_OF:
            k = max(1, round(sum(frdiff.step_costs(v.policy, savings))))
            if k not in taken:
                taken.add(k)
                out.append(Variant(f"DDIM {k} steps (= {v.name}'s compute)", None, steps=k, scheduler="ddim"))
    return out


def add_error_spectra(result: dict) -> None:
    """Each variant's error spectrum against the reference (radial, averaged over images and channels) and its mean
    error power in the low and high thirds of the frequencies; the images are dropped afterwards."""
    from workbench.analysis.frequency import band_errors, error_spectrum

    ref = result["reference"].pop("images").numpy()
    for v in result["variants"]:
        spec = error_spectrum(v.pop("images").numpy(), ref)
        v["error_spectrum"] = [float(x) for x in spec]
        v["band_errors"] = band_errors(spec)
