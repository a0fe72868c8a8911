"""Static graphs for static policies: regional and whole-call compilation, CUDA graphs (``frdiff.apply(...,
compile=..., cuda_graphs=...)``).

A keyframe policy is known before sampling starts, so which blocks compute and which reuse at a step is a Python
constant. In ``compile="regional"`` mode every policy block runs as its own compiled graph (regional compilation,
as diffusers' ``compile_repeated_blocks`` does for stock blocks), with the block's reuse rule *inside* the graph:

- a :class:`CompiledBlockHook`, the outermost hook on each block, sets the block's reuse hook to this step's phase
  (``keep``: compute and capture the cached part; ``reuse``: use the value handed in) and, at a reuse step, hands it
  the held or forecast value, computed eagerly from the cache (a few element-wise ops). Then it calls the block's
  compiled forward: dynamo traces through the reuse hook, whose branches read only the phase, so each block has one
  graph per phase (two at most; a block never reused has one) and a 50-step run compiles nothing after its first
  steps. After the call the hook commits the captured value to the cache.
- the rest of the denoiser (embeddings, down/up-samplers, the output head) and the step logic (score mixing, skipped
  steps) stay eager: small next to the blocks.
- ``fullgraph=True``: a graph break inside a block raises instead of silently splitting the graph.
- ``compile="full"`` (:class:`StepRunners`): each distinct step configuration of the policy (which blocks compute,
  which reuse) as one compiled graph of the whole denoiser call, chosen in Python before the call; the blocks' rules
  run inline in it (the phase a constant, the held or forecast value and the cache writes inside the graph, the
  caches static buffers, a forecast's weights a device buffer), so a step has no Python per block.
- ``cuda_graphs=True``: the same graphs compiled with ``mode="reduce-overhead"`` (inductor's CUDA graph trees: each
  graph captured once, replayed per call). A new replay may overwrite an earlier one's outputs, so cached values are
  cloned out and every denoiser call starts a new CUDA-graph step (``torch.compiler.cudagraph_mark_step_begin``).

Blocks of one kind (same class, same parameter shapes) share one compiled runner (without CUDA graphs; with them each
block has its own, since a captured graph holds its parameters' addresses): dynamo's guards read a block's
structure, not its identity, so the second of 28 identical DiT blocks replays the first one's graphs, and a model's
compile time grows with its number of distinct kinds of block, not its number of blocks (as with diffusers'
``compile_repeated_blocks``). A runner's graphs are one per phase × input layout × batch size (the first block of a
run may see a differently strided input than the others); its recompile limit is raised to 64 for its own calls
(dynamo's default, 8, applies everywhere else). Runners live for the process, so a later ``apply`` of another policy
or a copy of the model finds them compiled. :func:`graphs_compiled` reads dynamo's count of graphs, which the run
report uses to show that nothing recompiles after warm-up.
"""

from __future__ import annotations

import itertools
import types

import torch
from diffusers.hooks import ModelHook
from torch import nn

from .blocks import find_blocks
from .reuse import HOOK_PREFIX, STATIC_FORWARD, ReuseState, attach, hook_target

COMPILE_MODES = ("off", "regional", "full")
_ids = itertools.count()


CUDA_GRAPH_MODES = (False, True, "blocks", "step")


def check_compile(compile: str, cuda_graphs: bool | str) -> str | None:
    """The CUDA-graph mode (``None``, ``"blocks"`` or ``"step"``) of a valid ``compile`` / ``cuda_graphs`` pair."""
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    if not any(cuda_graphs is m or (isinstance(m, str) and cuda_graphs == m) for m in CUDA_GRAPH_MODES):
        raise ValueError(f"cuda_graphs must be False, True (= 'blocks') or 'step', got {cuda_graphs!r}")
    mode = "blocks" if cuda_graphs is True else cuda_graphs or None
    if mode == "blocks" and compile != "regional":
        raise ValueError("cuda_graphs='blocks' needs compile='regional' (the graphs it captures are the compiled "
                         "blocks); cuda_graphs='step' captures whole steps in any compile mode")
    return mode


def check_compile_options(compile: str, backend: str, options: dict | None) -> dict | None:
    """``options`` for torch.compile's inductor (``{"cpp_wrapper": True}``: the compiled code launches its kernels
    from C++, not Python — the host cost of a step that is launch-bound), checked before anything compiles: a name
    inductor does not know, or options without a compile mode or with another backend, get one message."""
    if not options:
        return None
    if not isinstance(options, dict):
        raise TypeError(f"compile_options is a dict of inductor's options, e.g. {{'cpp_wrapper': True}}; got "
                        f"{type(options).__name__}")
    if compile == "off":
        raise ValueError("compile_options tune inductor's code: they need compile='regional' or 'full'")
    if backend != "inductor":
        raise ValueError(f"compile_options are inductor's; backend {backend!r} takes none")
    key = options_key(options)
    if key not in _checked_options:  # inductor's check costs about a millisecond: once per set, not per apply
        _checked_options[key] = _inductor_checked(options)
    return dict(_checked_options[key])


_checked_options: dict[str, dict] = {}


def _inductor_checked(options: dict) -> dict:
    """``options`` with names inductor knows and values of the types it takes (converted where lossless)."""
    from torch import _inductor

    known = set(_inductor.list_options())
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise ValueError(f"inductor has no option {', '.join(map(repr, unknown))} "
                         f"(torch._inductor.list_options() lists them)")
    graphs = sorted(k for k in options if k in ("triton.cudagraphs", "triton.cudagraph_trees"))
    if graphs:  # inductor's own graphs would replay the hooks' cache writes without the mark-step and clone
        # safeguards of cuda_graphs="blocks", or nest inside a step graph's capture
        raise ValueError(f"{', '.join(map(repr, graphs))}: CUDA graphs are chosen with cuda_graphs= ('blocks' or "
                         f"'step'), which keeps the caches safe; not with inductor's options")
    checked = {key: _as_config_type(key, value) for key, value in options.items()}
    try:  # inductor checks the values' types when torch.compile is called, not at the first compiled call
        torch.compile(lambda x: x, backend="inductor", options=checked)
    except RuntimeError as exc:
        raise ValueError(f"inductor refuses these options: {exc}") from None
    return checked


def _as_config_type(key: str, value):
    """``value`` as the type of inductor's current setting of ``key`` where that loses nothing (0/1 for a flag, an
    integer for a float setting), as written on a command line; anything else is left for inductor to judge."""
    from torch._inductor import config

    current = config
    for part in key.split("."):  # "triton.cudagraphs" is config.triton.cudagraphs
        current = getattr(current, part, None)
    if isinstance(current, bool) and type(value) is int and value in (0, 1):
        return bool(value)
    if type(current) is float and type(value) is int:
        return float(value)
    return value


def _compile(fn, backend: str, options: dict | None, mode: str | None = None):
    """torch.compile of a runner, whole graph, static shapes; ``options`` (inductor's) with ``mode``'s own merged
    in, since torch.compile takes a mode or options, not both."""
    if not options:
        return torch.compile(fn, backend=backend, mode=mode, fullgraph=True, dynamic=False)
    from torch import _inductor

    merged = {**(_inductor.list_mode_options(mode) if mode else {}), **options}
    return torch.compile(fn, backend=backend, options=merged, fullgraph=True, dynamic=False)


def options_key(options: dict | None) -> str:
    """``options`` as part of a cache key (a different option is different compiled code)."""
    return repr(sorted((options or {}).items()))


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (all threads)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _runner(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def _fresh_runner():
    """A copy of :func:`_runner` with a code object of its own (dynamo keeps compiled graphs per code object)."""
    code = _runner.__code__.replace(co_name=f"frdiff_block_{next(_ids)}")
    return types.FunctionType(code, _runner.__globals__, code.co_name)


_shared_runners: dict = {}
_RECOMPILE_LIMIT = torch._dynamo.config.patch(recompile_limit=64)


def _signature(module: nn.Module) -> tuple:
    """What makes two blocks trace to the same graph: their class and their parameters' and buffers' shapes and
    dtypes (the values are graph inputs, not constants)."""
    return (type(module), tuple((n, tuple(t.shape), t.dtype, t.device.type) for n, t in
                                itertools.chain(module.named_parameters(), module.named_buffers())))


def _compiled_runner(module: nn.Module, cuda_graphs: bool, backend: str, options: dict | None = None):
    """The compiled runner of ``module``'s kind of block: one per (class, parameter shapes), shared by identical
    blocks (dynamo's guards read the module's structure, not its identity, so the second block of a kind reuses the
    first one's graphs) and kept for the process, so a later ``apply`` of any policy finds the graphs the earlier ones
    compiled (its guards read the hook's type and phase, not which hook object it is).

    With CUDA graphs each block keeps a runner of its own (on the module): a captured graph bakes in its parameters'
    addresses, and a graph shared by blocks would be re-captured at every call of another block."""
    mode = "reduce-overhead" if cuda_graphs else None
    if cuda_graphs:
        runners, key = module.__dict__.setdefault("_frdiff_runners", {}), (backend, options_key(options))
    else:
        runners, key = _shared_runners, (backend, options_key(options), _signature(module))
    if key not in runners:
        runners[key] = _compile(_fresh_runner(), backend, options, mode)
    return runners[key]


def _static_forward(module: nn.Module):
    """The forward a reuse target inside a block (a transformer block's ``attn1``) gets in compile mode: its current
    hook's static rule. Made once per module and kept on it, so graphs traced through it stay valid across runs."""
    fn = module.__dict__.get("_frdiff_static_forward")
    if fn is None:
        def fn(*args, **kwargs):
            return module._frdiff_static.static_forward(module, *args, **kwargs)

        module.__dict__["_frdiff_static_forward"] = fn
    return fn


class CompiledBlockHook(ModelHook):
    """Compile mode: runs its block — its reuse rule included — as compiled graphs, one per phase of the rule."""

    def __init__(self, hook, fn, runner, rule_first: bool):
        super().__init__()
        self.hook = hook  # the block's reuse hook (None: the block always computes: its stock forward)
        self.fn = fn  # what the graph runs: the hook's static rule, or the block's class forward
        self.runner = runner
        self.head = (hook,) if rule_first else ()  # the static rule takes its hook before the module

    @torch.compiler.disable(recursive=False)  # the phase decision is Python, outside the graphs
    def new_forward(self, module, *args, **kwargs):
        if self.hook is not None:
            self.hook.prepare()
        with _RECOMPILE_LIMIT:  # a shared runner holds phases × input layouts × batch sizes of a kind of block
            out = self.runner(self.fn, *self.head, module, *args, **kwargs)
        if self.hook is not None:
            self.hook.commit()
        return out


def attach_compiled(denoiser: nn.Module, blocks: list[str], granularity: list[str], state: ReuseState,
                    attached: list[tuple[nn.Module, str]], idle: list[bool], cuda_graphs: bool, backend: str,
                    options: dict | None = None) -> None:
    """Compile mode: every block of ``blocks`` runs through a :class:`CompiledBlockHook`; blocks that reuse get their
    reuse hook (row i of ``state``) in static form, not as a registry hook."""
    modules = dict(denoiser.named_modules())
    kinds = dict(find_blocks(denoiser))
    for i, (name, gran) in enumerate(zip(blocks, granularity, strict=True)):
        module = modules[name]
        if "forward" in module.__dict__:
            raise RuntimeError(f"block {name} already has a hook on its forward; compile mode runs each block's own "
                               f"forward (remove the other hook or use compile='off')")
        hook, fn, rule_first = None, type(module).forward, False
        if not idle[i]:
            target, cls = hook_target(module, kinds.get(name, "generic"), gran)
            hook = cls(state, i, name)
            hook.static, hook.class_forward = True, type(target).forward
            if target is module:
                fn, rule_first = cls.static_forward, True
            else:
                target._frdiff_static = hook
                target.forward = _static_forward(target)
                attached.append((target, STATIC_FORWARD))
        hook_name = f"{HOOK_PREFIX}-compiled-{i}"
        attach(module, CompiledBlockHook(hook, fn, _compiled_runner(module, cuda_graphs, backend, options),
                                       rule_first),
               hook_name)
        attached.append((module, hook_name))


def attach_full(denoiser: nn.Module, blocks: list[str], granularity: list[str], state: ReuseState,
                attached: list[tuple[nn.Module, str]], idle: list[bool]) -> list[nn.Module]:
    """``compile="full"``: every reusing block's rule in its static, inline form (phase set before the call, value
    held or forecast and cache written inside the graph), on a forward made once per module, so the graph of the
    whole denoiser call traced through it stays valid for later applies (dynamo guards a function by identity).
    Returns the hooked modules, in the order of ``state.hooks``."""
    targets = []
    modules = dict(denoiser.named_modules())
    kinds = dict(find_blocks(denoiser))
    for i, (name, gran) in enumerate(zip(blocks, granularity, strict=True)):
        if idle[i]:
            continue
        target, cls = hook_target(modules[name], kinds.get(name, "generic"), gran)
        if "forward" in target.__dict__:
            raise RuntimeError(f"block {name} already has a hook on its forward; compile mode runs each block's own "
                               f"forward (remove the other hook or use compile='off')")
        hook = cls(state, i, name)
        hook.static = hook.inline = True
        hook.class_forward = type(target).forward
        target._frdiff_static = hook
        target.forward = _static_forward(target)
        attached.append((target, STATIC_FORWARD))
        targets.append(target)
    return targets


class StepRunners:
    """``compile="full"``: each distinct step configuration of a static policy — which blocks compute and which
    reuse — as one compiled graph of the whole denoiser call, chosen in Python before the call. The blocks' rules run
    inline (:func:`attach_full`): the phase is a constant of the graph, the held or forecast value and the cache
    writes are inside it, the cache is static buffers (``ReuseState.static_cache``) and a forecast's weights a
    device buffer. So a step has no graph break and no Python per block, and inductor fuses across blocks.

    One compiled runner (a code object of its own) per configuration, so each holds one graph and none recompiles
    when the configuration changes from step to step; runners are kept on the denoiser per policy structure (blocks,
    granularity, reuse orders, which blocks never reuse, cache dtype, backend), so policies of one structure — M=2
    and M=3, with or without mixing — share them. A run whose caches are not allocated yet (the first run, or the
    first after a change of shapes) runs its first step eagerly first: its keyframes allocate the buffers."""

    def __init__(self, denoiser: nn.Module, targets: list[nn.Module], key: tuple, backend: str,
                 options: dict | None = None):
        self.denoiser, self.targets, self.backend, self.options = denoiser, targets, backend, options
        self.runners = denoiser.__dict__.setdefault("_frdiff_full_runners", {}).setdefault(key, {})

    def __call__(self, phases: tuple, *args, **kwargs):
        hooks = [t._frdiff_static for t in self.targets]  # the modules' hooks now (a later apply's, in a replay)
        for hook, keep in zip(hooks, phases, strict=True):
            hook.phase = "keep" if keep else "reuse"
        forward = type(self.denoiser).forward
        if any(hook.cache is None for hook in hooks):
            # the first keyframes allocate the buffers, eagerly; then the compiled graph of this configuration runs
            # too (at a block's first keyframe its slots all hold one value, so running the keyframe again changes
            # them by rounding only): its compilation happens now, not inside a CUDA graph capture, and this step's
            # output is the compiled graph's, as at every later run's first step
            forward(self.denoiser, *args, **kwargs)
        runner = self.runners.get(phases)
        if runner is None:
            runner = self.runners[phases] = _compile(_fresh_runner(), self.backend, self.options)
        try:
            return runner(forward, self.denoiser, *args, **kwargs)
        except torch._dynamo.exc.Unsupported as exc:
            if _raised_by_the_model(exc):
                # the traced code raised (a bad argument, say): tracing executes nothing, so the call runs eagerly
                # and the caller gets the model's own exception, not dynamo's "Observed exception"
                forward(self.denoiser, *args, **kwargs)
            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "a graph break")
            raise RuntimeError(f"compile='full' runs the whole {type(self.denoiser).__name__} call as one graph, but "
                               f"dynamo cannot trace it as one ({reason}); use compile='regional' (each block a "
                               f"graph) or compile='off'") from exc


def _broadcast_dims(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``t`` narrowed to one element along each broadcast dimension (stride 0, size > 1), and those dimensions."""
    dims = tuple(d for d, (size, stride) in enumerate(zip(t.shape, t.stride(), strict=True))
                 if stride == 0 and size > 1)
    for d in dims:
        t = t.narrow(d, 0, 1)
    return t, dims


def _static_input(t: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """A step graph's static copy of an input, with the input's strides: a compiled graph guards on strides, so a
    plain clone of a broadcast input (a pipeline's timestep expanded to the batch has stride 0) or of a permuted one
    would compile the configuration again. A broadcast dimension stays broadcast over a one-element base, which a
    replay refills (``_broadcast_dims``); a dense input gets a buffer of its own layout; an input with gaps (a strided
    slice) gets a contiguous one, for which the configuration compiles once more, in the eager call before its
    capture. ``device``: where a CPU input's copy lives (the captured work's GPU)."""
    base, dims = _broadcast_dims(t)
    where = device if device is not None and t.device.type == "cpu" else base.device
    static = torch.empty_like(base, memory_format=torch.preserve_format, device=where).copy_(base)
    return static.expand(t.shape) if dims else static


def _raised_by_the_model(exc: BaseException) -> bool:
    """Whether dynamo's error is an exception the traced code raised (an observed exception), not a graph break."""
    seen = exc
    while seen is not None:
        if isinstance(seen, torch._dynamo.exc.ObservedException):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


MAX_SIGNATURES = 4  # run signatures whose graphs and cache buffers a StepGraphs keeps
_run_ids = itertools.count()


def run_signature(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
    """What a captured step depends on beyond its configuration: the first call's inputs (shapes, strides, dtypes,
    devices, plain values), where the denoiser's weights live (a graph reads them by address: ``pipe.to()``, offloading
    or ``load_state_dict(assign=True)`` move them) and the modes the call runs in (grad, inference mode — a buffer made
    under ``inference_mode`` cannot be written outside it — and autocast)."""
    from torch.utils._pytree import tree_flatten

    flat, spec = tree_flatten((args, kwargs))
    weights = tuple((t.data_ptr(), t.dtype, t.device) for t in itertools.chain(module.parameters(), module.buffers()))
    modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
             *((torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)) for kind in ("cuda", "cpu")))
    return StepGraphs._signature(flat), spec, weights, modes


class StepGraphs:
    """``cuda_graphs="step"``: each distinct step configuration of a static policy — which blocks compute and which
    reuse, and the call's input shapes — captured once as one CUDA graph of the whole denoiser call and replayed at
    every step with that configuration. One graph launch per step instead of a kernel launch (and a hook's Python) per
    operation: what per-block graphs cannot remove when a step's GPU work is a few milliseconds.

    The first call of a configuration runs eagerly (its result is the step's output; it also allocates the blocks'
    cache buffers and runs any compilation), then the configuration is captured (nothing executes during a capture);
    later calls copy the inputs into the graph's static inputs, replay, and return a copy of its outputs. The caches
    are static buffers written in place (``ReuseState.static_cache``: a forecasting block keeps its last keyframe
    values in fixed slots, shifted at each keyframe), and a forecast's weights, which change every step, are a device
    buffer (``weights``) the step hook fills from a per-run table before each call, so the captured step reads them
    as data. Score mixing, skipped steps and ε forecasts run eagerly around the graph, in the step hook.

    ``fake=True`` (CPU tests only): "capturing" runs nothing (as a CUDA capture executes nothing) and keeps the call;
    "replaying" runs it on the static inputs, with the step pinned to the captured one, and copies the result into
    the static outputs, which checks the static-buffer plumbing without a GPU; it is not a CUDA graph."""

    def __init__(self, fake: bool = False, capture: bool = True):
        self.fake = fake
        self.capture = capture  # False (compile="full" without CUDA graphs): calls run as they are; the static
        # buffers, weights and tables are kept all the same
        self.graphs: dict = {}
        self.captures = 0  # configurations captured so far (a run after warm-up captures none)
        self.buffers: list | None = None  # the blocks' cache buffers the graphs were captured with
        self.inputs: tuple | None = None  # the run signature (``run_signature``) the buffers were made for
        self.run_id: int | None = None  # a small number for it, in the graphs' keys (hashed at every step)
        self.ids: dict = {}  # run signature → its number, for the signatures kept
        self.stashed: dict = {}  # other run signatures' cache buffers, oldest first (their graphs stay too)
        self.streams: dict = {}  # per CUDA device: the side stream captures run on
        self.weights: torch.Tensor | None = None  # forecasts: this step's weights [blocks, slots], read by the graphs
        self.tables: dict = {}  # forecasts: every step's weights per set of forecast positions, on the device
        self.fake_state = None  # fake: the current run's ReuseState (a replay pins its step to the captured one)

    def start_run(self, module: nn.Module, args: tuple, kwargs: dict, buffers: list) -> list | None:
        """At a run's first step, with the blocks' cache buffers as they stand: ``None`` where the run signature is
        the one the buffers were made for; otherwise the buffers kept for the new signature (a list, or ``[]`` for
        none: this run's first keyframes allocate them). The current ones are kept for the old signature, so calls
        that alternate between signatures — a last, smaller batch of seeds; ``inference_mode`` and ``no_grad`` —
        capture each configuration once, not at every change. ``MAX_SIGNATURES`` are kept, with their graphs; where
        the weights moved, none is (the graphs read the weights by address)."""
        sig = run_signature(module, args, kwargs)
        if sig == self.inputs:
            return None
        if self.inputs is not None and sig[2] != self.inputs[2]:  # the weights moved: every graph read the old
            self.graphs.clear()
            self.stashed.clear()
            self.ids.clear()
        elif self.inputs is not None:
            self.stashed[self.inputs] = buffers
        if sig not in self.ids:
            self.ids[sig] = next(_run_ids)
        restored = self.stashed.pop(sig, [])
        self.inputs, self.run_id = sig, self.ids[sig]
        while len(self.stashed) >= MAX_SIGNATURES:  # the oldest signature goes, with its graphs
            oldest = next(iter(self.stashed))
            del self.stashed[oldest]
            dropped = self.ids.pop(oldest)
            for key in [k for k in self.graphs if k[1] == dropped]:
                del self.graphs[key]
        return restored

    def _fake_capture(self, fn, args: tuple, kwargs: dict) -> None:
        """The CPU stand-in's capture: the call's Python runs, as in a CUDA capture, and must compile nothing (a
        CUDA capture cannot compile: dynamo's ``fail_on_recompile`` stance raises); its effects on the caches are
        undone, as a capture executes no kernel."""
        caches = [t for hook in self.fake_state.hooks for t in hook.cached_tensors()]
        saved = [t.clone() for t in caches]
        with torch.compiler.set_stance("fail_on_recompile"):
            fn(*args, **kwargs)
        for t, old in zip(caches, saved, strict=True):
            t.copy_(old)

    def _fake_graph(self, fn, args: tuple, kwargs: dict):
        """The CPU stand-in's "graph": the call rerun with the step pinned to the captured one (``fake_state``: the
        current run's :class:`~frdiff.reuse.ReuseState`). A CUDA graph replays what its capture recorded, Python
        constants included; pinning the step makes a value the capture took from Python at its own step (a
        forecast weight, say) as wrong in the stand-in as it would be on the GPU."""
        captured = self.fake_state.step

        def replay():
            state = self.fake_state
            now, state.step = state.step, captured
            try:
                return fn(*args, **kwargs)
            finally:
                state.step = now

        return replay

    def _capture(self, graph, device: torch.device, fn, args: tuple, kwargs: dict):
        """One CUDA-graph capture of ``fn`` on a side stream of ``device`` (one per device: torch.cuda.graph's default
        capture stream belongs to the first device that used it). Nothing may compile during it: the eager call
        before it compiled what this configuration needs, and a guard that fails anyway raises dynamo's error here
        instead of an opaque CUDA one. The caller's stream is current again afterwards, whatever happened."""
        with torch.cuda.device(device):
            stream = self.streams.get(device)
            if stream is None:
                stream = self.streams[device] = torch.cuda.Stream(device)
            caller = torch.cuda.current_stream(device)
            torch.cuda.synchronize(device)
            try:
                with torch.compiler.set_stance("fail_on_recompile"), torch.cuda.graph(graph, stream=stream):
                    return fn(*args, **kwargs)
            finally:
                torch.cuda.set_stream(caller)

    @staticmethod
    def _signature(flat) -> tuple:
        # strides too: a static input keeps the caller's layout (a broadcast dimension is refilled from one element)
        return tuple((tuple(t.shape), t.stride(), t.dtype, t.device) if isinstance(t, torch.Tensor)
                     else ("value", repr(t)) for t in flat)

    def __call__(self, phases: tuple, fn, args: tuple, kwargs: dict):
        from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

        if not self.capture:
            return fn(*args, **kwargs)
        flat, spec = tree_flatten((args, kwargs))
        key = (phases, self.run_id, self._signature(flat), spec)
        entry = self.graphs.get(key)
        if entry is None:
            device = None if self.fake else next(
                (t.device for t in flat if isinstance(t, torch.Tensor) and t.is_cuda), None)
            if device is None and not self.fake:
                raise RuntimeError("cuda_graphs='step' captures CUDA work: the denoiser call has no CUDA tensor")
            # a CPU tensor (a stock DDIMPipeline's 0-d timestep) gets a static copy on the GPU, refilled without a
            # sync at each replay: the model's own upload of it would be a blocking copy, which a capture refuses
            static = [_static_input(t, device) if isinstance(t, torch.Tensor) else t for t in flat]
            s_args, s_kwargs = tree_unflatten(static, spec)
            # eager, on the static inputs (they keep the caller's strides, so what compiled for the caller's tensors
            # serves them; anything that compiles still does so now, not during the capture): this step's result;
            # allocates the caches
            out = fn(*s_args, **s_kwargs)
            if self.fake:  # the "graph" reruns the call on the static inputs and overwrites the static outputs
                self._fake_capture(fn, s_args, s_kwargs)
                graph = self._fake_graph(fn, s_args, s_kwargs)
                s_out = tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, out)
            else:
                graph = torch.cuda.CUDAGraph()
                s_out = self._capture(graph, device, fn, s_args, s_kwargs)
            targets = [_broadcast_dims(s)[0] if isinstance(s, torch.Tensor) else None for s in static]
            self.graphs[key] = (graph, static, targets, s_out)
            self.captures += 1
            return out
        graph, static, targets, s_out = entry
        for s, target, t in zip(static, targets, flat, strict=True):
            if isinstance(t, torch.Tensor) and s.data_ptr() != t.data_ptr():
                base = _broadcast_dims(t)[0]  # the one-element base of a broadcast input, else the input
                if base.device != target.device:  # a CPU input: staged in pinned memory, which the caching host
                    # allocator keeps until the copy has run, so the upload waits for nothing
                    target.copy_(base.pin_memory(), non_blocking=True)
                else:
                    target.copy_(base)
        if self.fake:
            fresh, _ = tree_flatten(graph())
            for mine, new in zip(tree_flatten(s_out)[0], fresh, strict=True):
                if isinstance(mine, torch.Tensor):
                    mine.copy_(new)
        else:
            graph.replay()
        return tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, s_out)
