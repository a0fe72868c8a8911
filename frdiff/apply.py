"""``frdiff.apply(pipe, policy)``: run a stock diffusers pipeline with feature reuse and score mixing.

    with frdiff.apply(pipe, policy) as run:
        images = pipe(...).images
    print(run.report())

One hook on the denoiser counts its calls (call k = step k; one call per step, CFG batched, as in SD, DiT and the
project's pipeline, for DDIM, DPM-Solver++ (multistep), Euler and UniPC) and, per step (the FRDiff paper):

- *full* step (every policy block a keyframe): the stock forward; its output becomes ε_key.
- *FR* step with λ(r) > 0: the forward with the block hooks reusing their caches, then ε̂ = λ·ε_FR + (1 − λ)·ε_key
  on the batched CFG output, before the pipeline applies guidance.
- λ(r) = 0: the denoiser is not called; ε_key is returned as this step's output. That is where time is saved.

Reuse under multistep solvers: DPM-Solver++ and UniPC combine this step's output with earlier ones. A reused ε
enters that history as if it were a fresh evaluation at the current timestep, so the solver's higher-order terms see
two (nearly) equal outputs at different times; the benchmarks measure what that costs (``docs/engine.md``).

Several pipeline calls may run inside one ``with``: each run of ``steps`` denoiser calls starts afresh. Hooks are
removed and caches freed on exit, also after an exception. A pipeline (its denoiser) runs one policy at a time:
:func:`exclusive` holds the same per-denoiser lock for plain runs of a shared pipeline, and a call of the denoiser
from another thread while a policy is applied raises instead of silently mixing two runs.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from diffusers.hooks import ModelHook
from torch import nn

from .blocks import denoiser_of, find_blocks, first_tensor
from .compiling import (
    StepGraphs,
    StepRunners,
    attach_compiled,
    attach_full,
    check_compile,
    check_compile_options,
    graphs_compiled,
    options_key,
)
from .policy import ORDERS, Policy, PolicyError, model_fingerprint
from .prediction import check_scheduler, data_coefficients, from_data, to_data
from .reuse import (
    HOOK_PREFIX,
    History,
    ReuseState,
    attach,
    attach_reuse_hooks,
    detach_all,
    forecast,
    remember,
    static_forecast_weights,
    wrapper,
)


class _PipelineLock:
    """A denoiser's run lock that knows its holder, so nesting in one thread is caught instead of deadlocking."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: int | None = None

    def held_here(self) -> bool:
        return self.owner == threading.get_ident()

    def acquire(self, timeout: float | None, what: str) -> None:
        _check_timeout(timeout, what)
        wait = -1 if timeout is None or math.isinf(timeout) else float(timeout)  # threading's -1: no limit
        if not self.lock.acquire(timeout=wait):
            raise RuntimeError(f"the pipeline is busy with another run; {what} waited {timeout} s")
        self.owner = threading.get_ident()

    def release(self) -> None:
        self.owner = None
        self.lock.release()


def _check_timeout(timeout, what: str) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real)
                                or math.isnan(timeout) or timeout < 0):
        raise ValueError(f"{what}: timeout must be None (wait) or a number of seconds >= 0, got {timeout!r}")


_LOCKS: weakref.WeakKeyDictionary[nn.Module, _PipelineLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
STEP_HOOK = f"{HOOK_PREFIX}-step"


def _lock_of(denoiser: nn.Module) -> _PipelineLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(denoiser)
        if lock is None:
            lock = _LOCKS[denoiser] = _PipelineLock()
        return lock


@contextmanager
def exclusive(pipe, timeout: float | None = None):
    """Hold ``pipe``'s denoiser for one run without a policy (the reference run of a shared pipeline).

    Inside :func:`apply` or another ``exclusive`` of the same thread it does nothing (the thread already holds it).
    """
    _check_timeout(timeout, "frdiff.exclusive")  # also where the thread holds the pipeline already
    lock = _lock_of(denoiser_of(pipe))
    if lock.held_here():
        yield
        return
    lock.acquire(timeout, "frdiff.exclusive")
    try:
        yield
    finally:
        lock.release()


@dataclass
class RunReport:
    """What an applied run did: per-step decisions and counts (the last complete or partial run)."""

    steps: int
    step_kinds: list[str] = field(default_factory=list)  # full | fr | skip, per executed step
    lambdas: list[float] = field(default_factory=list)
    timesteps: list[float] = field(default_factory=list)
    denoiser_calls: int = 0
    block_reuses: int = 0
    runs: int = 0  # complete pipeline runs inside the ``with``
    seconds: float = 0.0
    cache_bytes: int = 0  # the most the caches (block values and ε_key) held at once
    graphs_per_run: list[int] = field(default_factory=list)  # compile mode: graphs dynamo compiled in each run
    captures_per_run: list[int] = field(default_factory=list)  # cuda_graphs="step": step graphs captured per run

    def as_dict(self) -> dict:
        return dict(vars(self))


class _StepHook(ModelHook):
    """Denoiser-level control: step counting, skipping and score mixing (``new_forward``), with ε_key held or
    forecast from the last full steps' outputs (the policy's ``skip_reuse``) — as outputs, or as the data
    predictions x̂₀ they imply (``skip_space`` ``"data"``, :mod:`frdiff.prediction`)."""

    _is_stateful = True

    def __init__(self, policy: Policy, state: ReuseState, pipe, owner: int, report: RunReport):
        super().__init__()
        self.policy, self.state, self.pipe, self.owner, self.report = policy, state, pipe, owner, report
        self.kinds = policy.step_kinds()
        self.lams = policy.step_lambdas()
        self.needs_eps = policy.uses_eps_key()  # otherwise nothing needs to keep the full steps' outputs
        self.order = ORDERS[policy.skip_reuse]
        self.calls = 0
        self.eps: History | None = None  # the last full steps' outputs (ε_key is their hold or forecast)
        self.data: list[tuple[float, float]] | None = None  # skip_space "data": per step, x̂₀ = a·x_t + b·output
        self.corrector: tuple | None = None  # skip_space "data" under UniPC: (scheduler, its own disable_corrector)
        self.wrap = None
        self.cuda_graphs = False  # compile mode with CUDA graphs: each call starts a new CUDA-graph step
        self.count_graphs = False  # compile mode: count the graphs dynamo compiles per run (eager: no dynamo import)
        self.graphs_at_start = 0
        self.step_graphs: StepGraphs | None = None  # cuda_graphs="step": whole denoiser calls captured per phases
        self.weight_table: torch.Tensor | None = None  # step graphs with forecasts: per step, the blocks' weights
        self.runners: StepRunners | None = None  # compile="full": one compiled graph of the call per configuration
        self.static_batch: int | None = None  # static caches: the batch of the run's first call
        self.captures_at_start = 0
        self.schedule = None  # the scheduler's timesteps when this run began

    def reset_state(self, module):
        self.calls = 0
        self._set_eps(None)
        return module

    def _set_eps(self, new: History | None) -> None:
        self.state.account(self.eps, new)
        self.eps = new

    def _start_run(self) -> None:
        scheduler = getattr(self.pipe, "scheduler", None)  # read now: callers may swap the scheduler after apply()
        n = getattr(scheduler, "num_inference_steps", None) if scheduler is not None else None
        if n is not None and int(n) != self.policy.steps:
            raise PolicyError([f"the policy is for {self.policy.steps} steps but the pipeline runs {n}; remap it "
                               f"(`python -m workbench policy remap P.json --steps {n}`) or make one for {n} steps"])
        self.calls = 0
        self.schedule = getattr(scheduler, "timesteps", None)  # a new pipeline call sets new ones: a new run
        if self.count_graphs:
            self.graphs_at_start = graphs_compiled()
        self._set_eps(None)  # the last run's ε history: its bytes no longer held
        if self.step_graphs is not None:  # the captured steps own the cache buffers: kept from run to run
            self.captures_at_start = self.step_graphs.captures
        else:
            self.state.clear()
        self.state.positions = _timestep_positions(scheduler, self.policy) \
            if self.policy.forecast_axis == "timestep" else None
        self.weight_table = self._weight_table() if self.state.weights is not None else None
        self.data = data_coefficients(scheduler, self.policy.steps) \
            if self.needs_eps and self.policy.skip_space == "data" else None  # read once per run: no sync per step
        if self.data is not None and isinstance(getattr(scheduler, "disable_corrector", None), list):
            self._corrector_off(scheduler)
        self.report.step_kinds, self.report.lambdas, self.report.timesteps = [], [], []
        self.report.denoiser_calls = self.report.block_reuses = 0
        self.state.reused = 0

    def _new_schedule(self) -> bool:
        """Whether the pipeline set new timesteps since this run began: a pipeline call starts with
        ``set_timesteps``, so a run broken off (an exception caught inside ``apply``) does not leave the next call
        mid-run, on the broken run's caches. An identity check: no sync, no copy."""
        scheduler = getattr(self.pipe, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None) if scheduler is not None else None
        return timesteps is not None and timesteps is not self.schedule

    def _check_static_batch(self, s: int, args: tuple, kwargs: dict) -> None:
        """Static caches (step graphs, compile="full"): the call's batch — its first tensor of one dimension or more —
        is the run's first step's, as the eager hooks check per block. Checked in Python before the call: in a graph
        a static buffer of another batch would be broadcast into silently, and an error raised inside a traced graph
        reaches the caller as dynamo's."""
        batch = next((int(a.shape[0]) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.ndim),
                     None)
        if s == 0:
            self.static_batch = batch
        elif batch != self.static_batch:
            raise PolicyError([f"the denoiser call's batch changed from {self.static_batch} at the run's first step to "
                               f"{batch} at step {s}; a policy run must keep one batch for all its steps"])

    def _start_static_run(self, module, args: tuple, kwargs: dict) -> None:
        """Step 0 with static caches: another run signature (input shapes, where the weights live, grad and
        inference mode: ``run_signature``) swaps the blocks' buffers for those kept for it (none yet: this run's
        first keyframes allocate them); then the forecasting blocks' kept slots are zeroed, so an earlier run's
        values — weighed 0 until this run has keyframes enough — cannot bring a non-finite value in (0·inf is NaN)."""
        swapped = self.step_graphs.start_run(module, args, kwargs, [h.cache for h in self.state.hooks])
        if swapped is not None:
            for i, h in enumerate(self.state.hooks):
                self.state.account(h.cache, None)
                h.cache = swapped[i] if swapped else None
                self.state.account(None, h.cache)
        slots = [t for h in self.state.hooks if h.order for t in h.cached_tensors()]
        if slots:
            torch._foreach_zero_(slots)

    def _weight_table(self) -> torch.Tensor:
        """Whole-step graphs with forecasts: every step's forecast weights ``[steps, blocks, slots]`` on the model's
        device, made once per set of forecast positions and called steps (an upload is a host sync: once, not per
        run or step)."""
        positions = self.state.positions or [float(s) for s in range(self.policy.steps)]
        tables = self.step_graphs.tables
        called = [kind != "skip" for kind in self.kinds]
        key = (tuple(positions), tuple(called))
        if key not in tables:
            rows = static_forecast_weights(self.state.mask, self.state.orders, called, positions)
            tables[key] = torch.tensor(rows, dtype=self.state.weights.dtype, device=self.state.weights.device)
        return tables[key]

    def _corrector_off(self, scheduler) -> None:
        """UniPC corrects step s's result with the model output at step s + 1 as a fresh evaluation; where that
        output is a forecast (a skipped step) there is nothing fresh to correct with, so its corrector is off there
        (``disable_corrector`` holds s for the step after s). Restored by :meth:`restore_corrector`."""
        self.restore_corrector()
        own = scheduler.disable_corrector
        skipped = {s - 1 for s, kind in enumerate(self.kinds) if kind == "skip" and s > 0}
        scheduler.disable_corrector = sorted(set(own) | skipped)
        self.corrector = (scheduler, own)

    def restore_corrector(self) -> None:
        if self.corrector is not None:
            scheduler, own = self.corrector
            scheduler.disable_corrector = own
            self.corrector = None

    def _end_run(self) -> None:
        self.report.runs += 1
        if self.count_graphs:
            self.report.graphs_per_run.append(graphs_compiled() - self.graphs_at_start)
        if self.step_graphs is not None:
            self.report.captures_per_run.append(self.step_graphs.captures - self.captures_at_start)

    def _eps_key(self, like: torch.Tensor, x_t: torch.Tensor | None) -> torch.Tensor:
        """ε_key at the current step; ``x_t``: the call's noisy input (skip_space "data")."""
        if self.data is None:
            return forecast(self.eps, self.state.x(), like.dtype)
        wide = torch.promote_types(like.dtype, torch.float32)  # x̂₀'s forecast and conversion in float32 or wider
        return from_data(forecast(self.eps, self.state.x(), wide), x_t, self.data[self.state.step], like.dtype)

    @torch.compiler.disable(recursive=False)  # Python-side control flow: torch.compile traces the model it calls
    def new_forward(self, module, *args, **kwargs):
        if threading.get_ident() != self.owner:
            raise RuntimeError("this denoiser has an FRDiff policy applied in another thread; run shared pipelines "
                               "inside frdiff.apply(...) or frdiff.exclusive(...) so runs take turns")
        if self.calls == 0 or self.calls >= self.policy.steps or self._new_schedule():
            self._start_run()
        s = self.calls
        self.calls += 1
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # earlier calls' graph outputs may be overwritten from now
        kind, lam = self.kinds[s], self.lams[s]
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.report.timesteps.append(t)  # kept as given: float() of a GPU tensor here would sync every step
        self.report.step_kinds.append(kind)
        self.report.lambdas.append(lam)
        self.state.step = s
        x_t = _noisy_input(args, kwargs) if self.data is not None else None
        if kind == "skip":
            if self.calls == self.policy.steps:
                self._end_run()
            return self.wrap(self._eps_key(self.eps[0][0], x_t))
        before = self.state.reused
        if self.step_graphs is not None:  # the phases are the mask's (step 0 is every block's keyframe)
            if t is not None and not isinstance(t, torch.Tensor):
                raise PolicyError([f"compile='full' and cuda_graphs='step' need the timestep as a tensor; this call "
                                   f"passes {type(t).__name__} {t!r}, which a graph would hold as a constant (one "
                                   f"graph per step): pass torch.tensor(t) as diffusers' pipelines do"])
            self._check_static_batch(s, args, kwargs)
            if s == 0:
                self._start_static_run(module, args, kwargs)
            phases = tuple(self.state.mask[h.idx][s] for h in self.state.hooks)
            if self.weight_table is not None:  # this step's forecast weights, where the captured step reads them
                self.state.weights.copy_(self.weight_table[s])
            fn = partial(self.runners, phases) if self.runners is not None else self.fn_ref.original_forward
            out = self.step_graphs(phases, fn, args, kwargs)
            self.report.block_reuses += phases.count(False)  # a replay runs no Python: counted from the phases
        else:
            if self.count_graphs:  # regional: the reuse runs inside compiled graphs, which would broadcast a cache
                # of another batch silently; the eager hooks check it per block
                self._check_static_batch(s, args, kwargs)
            out = self.fn_ref.original_forward(*args, **kwargs)
            self.report.block_reuses += self.state.reused - before
        self.report.denoiser_calls += 1
        if self.calls == self.policy.steps:
            self._end_run()
        eps = first_tensor(out)
        if kind == "full" or self.eps is None:
            self.wrap = wrapper(out)
            if self.needs_eps:
                value = eps if self.data is None else to_data(eps, x_t, self.data[s])
                self._set_eps(remember(self.eps, value, self.state.x(), self.order,
                                       self.state.cache_dtype or eps.dtype))
            return out
        if lam < 1.0:
            mixed = torch.lerp(self._eps_key(eps, x_t), eps, lam)  # λ·ε_FR + (1 − λ)·ε_key
            return wrapper(out)(mixed)
        return out


def _noisy_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The denoiser call's noisy input x_t: ``sample`` (UNets), ``hidden_states`` (transformers) or the first
    positional argument."""
    for key in ("sample", "hidden_states"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    raise PolicyError(["skip_space 'data' needs the denoiser's noisy input (a `sample` or `hidden_states` argument, or "
                       "the first positional one); this call has none (use skip_space 'output')"])


def _timestep_positions(scheduler, policy: Policy) -> list[float]:
    """The scheduler's timesteps as forecast positions (read once per run: one device→host copy, none per step)."""
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or len(timesteps) != policy.steps:
        raise PolicyError([f"forecast_axis 'timestep' needs the scheduler's {policy.steps} timesteps; this "
                           f"scheduler has {0 if timesteps is None else len(timesteps)} (use forecast_axis 'step')"])
    return [float(t) for t in torch.as_tensor(timesteps).double().cpu().tolist()]


class FRRun:
    """Handle returned by :func:`apply`: the report of what ran (read it after the ``with`` block)."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self._report = RunReport(steps=policy.steps)

    def report(self) -> RunReport:
        r = self._report
        r.timesteps = [_as_float(t) for t in r.timesteps]
        return r


def _as_float(t) -> float:
    if t is None:
        return float("nan")
    return float(torch.as_tensor(t).flatten()[0]) if not isinstance(t, float) else t


@contextmanager
def apply(pipe, policy: Policy, *, check_model: bool = True, timeout: float | None = None, compile: str = "off",
          cuda_graphs: bool = False, backend: str = "inductor", compile_options: dict | None = None):
    """Run ``pipe`` (a diffusers pipeline, or a denoiser module) with ``policy`` inside the ``with`` block.

    check_model: validate block names, granularities and the config fingerprint against this denoiser.
    timeout: seconds to wait while another thread runs the same pipeline (``None`` waits).
    compile: ``"off"`` (eager hooks); ``"regional"``: every policy block runs as compiled graphs with its reuse rule
    inside, one graph per block and phase (:mod:`frdiff.compiling`); ``"full"``: each distinct step configuration
    one compiled graph of the whole denoiser call with the reuse rules inline (:class:`~frdiff.compiling.StepRunners`;
    the first run's first step also runs eagerly: it allocates the caches, kept for later applies). The
    first run compiles (warm-up), later runs of the same shapes compile nothing (``report().graphs_per_run``). The
    no-reuse policy in a compile mode is the stock model compiled alike: the fair baseline for a compiled policy.
    cuda_graphs: ``"blocks"`` (or ``True``; with ``compile="regional"``): each block's compiled graphs captured as
    CUDA graphs (inductor's CUDA graph trees); ``"step"`` (with any compile mode): each distinct step configuration
    captured once as one CUDA graph of the whole denoiser call and replayed (:class:`frdiff.compiling.StepGraphs`;
    forecasts read their per-step weights from a device buffer; ``report().captures_per_run``). CUDA only.
    backend: torch.compile's backend (``"inductor"``; ``"eager"`` traces without code generation, for tests).
    compile_options: inductor's options for the compiled graphs (``torch.compile(options=...)``), e.g.
    ``{"cpp_wrapper": True}``: the graphs launch their kernels from C++ instead of Python, for steps whose cost is
    their kernel launches (compiled without CUDA graphs, at small batches). Graphs are kept per set of options.
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"apply takes an frdiff.Policy (Policy.load(path) reads a policy file), got "
                        f"{type(policy).__name__}")
    graph_mode = check_compile(compile, cuda_graphs)
    compile_options = check_compile_options(compile, backend, compile_options)
    denoiser = denoiser_of(pipe)
    device = next(denoiser.parameters(), torch.empty(0)).device
    fake = graph_mode == "step" and _FAKE_STEP_GRAPHS and device.type == "cpu"
    if graph_mode and device.type != "cuda" and not fake:
        raise ValueError(f"cuda_graphs needs the denoiser on a CUDA device; it is on {device}")
    train = getattr(getattr(getattr(pipe, "scheduler", None), "config", None), "num_train_timesteps", None)
    limits = {"train_timesteps": int(train)} if isinstance(train, int) else {}
    if check_model:
        policy.check(model_blocks=dict(find_blocks(denoiser)), fingerprint=model_fingerprint(denoiser), **limits)
    else:  # no fingerprint check; the blocks must still be there
        policy.check(**limits)
        names = {name for name, _ in denoiser.named_modules()}
        missing = [b for b in policy.blocks if b not in names]
        if missing:
            raise PolicyError([f"the policy names blocks this {type(denoiser).__name__} does not have: "
                               f"{', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                              else "") + "; it is for another model"])
    if policy.skip_space == "data" and policy.uses_eps_key():
        check_scheduler(getattr(pipe, "scheduler", None))  # refused now, not at the first step
    lock = _lock_of(denoiser)
    if lock.held_here():
        raise RuntimeError("frdiff.apply is already active on this pipeline in this thread; nested policies are not "
                           "supported (leave the first `with` block before applying another policy)")
    lock.acquire(timeout, "frdiff.apply")
    run = FRRun(policy)
    state = ReuseState(policy.keyframes, orders=[ORDERS[m] for m in policy.reuse],
                       cache_dtype=getattr(torch, policy.cache_dtype) if policy.cache_dtype else None)
    attached: list[tuple[nn.Module, str]] = []
    graphs: StepGraphs | None = None
    start = time.perf_counter()
    step_hook: _StepHook | None = None
    try:
        step_hook = _StepHook(policy, state, pipe, threading.get_ident(), run._report)
        attach(denoiser, step_hook, STEP_HOOK)
        attached.append((denoiser, STEP_HOOK))
        idle = [not r for r in policy.reusing_blocks()]  # never reused at a called step: no hook, no cache
        if graph_mode == "step" or compile == "full":  # static caches, kept from apply to apply
            state.static_cache = True
            graphs = step_hook.step_graphs = step_graphs_of(denoiser, policy, compile, backend, fake,
                                                            capture=graph_mode == "step",
                                                            options=compile_options)
            graphs.fake_state = state if fake else None
            if any(state.orders):  # forecasts: their weights are a buffer the captured steps read
                if graphs.weights is None or graphs.weights.device != torch.device(device):  # written in place
                    # at every step, under inference_mode or not; on the model's device (after a pipe.to(), too)
                    graphs.tables.clear()
                    with torch.inference_mode(False):
                        graphs.weights = torch.zeros(len(policy.blocks), max(state.orders) + 1, device=device)
                state.weights = graphs.weights
        if compile == "off":
            attach_reuse_hooks(denoiser, policy.blocks, policy.granularity, state, "reuse", attached, skip=idle)
        elif compile == "full":
            step_hook.count_graphs = True
            targets = attach_full(denoiser, policy.blocks, policy.granularity, state, attached, idle)
            structure = (tuple(policy.blocks), tuple(policy.granularity), tuple(state.orders), tuple(idle),
                         policy.cache_dtype, backend, options_key(compile_options))
            step_hook.runners = StepRunners(denoiser, targets, structure, backend, compile_options)
        else:
            state.clone_values = step_hook.cuda_graphs = graph_mode == "blocks"
            step_hook.count_graphs = True
            attach_compiled(denoiser, policy.blocks, policy.granularity, state, attached, idle,
                            graph_mode == "blocks", backend, compile_options)
        if graphs is not None and graphs.buffers is not None:  # the captured steps read and write these
            for hook, cache in zip(state.hooks, graphs.buffers, strict=True):
                hook.cache = cache
                state.account(None, cache)  # held by this run as much as by the one that allocated them
        yield run
    except BaseException:
        if graphs is not None:  # a run broken off mid-capture or mid-step: nothing of it is kept
            kept = denoiser.__dict__.get("_frdiff_step_graphs", {})
            for key in [k for k, g in kept.items() if g is graphs]:
                del kept[key]
            graphs = None
        raise
    finally:
        if graphs is not None:
            graphs.buffers = [hook.cache for hook in state.hooks]
        detach_all(attached)
        if step_hook is not None:
            step_hook.restore_corrector()  # the scheduler as the caller gave it
        run._report.cache_bytes = state.peak
        state.clear()
        run._report.seconds = time.perf_counter() - start
        lock.release()


_FAKE_STEP_GRAPHS = False  # tests only: cuda_graphs="step" on the CPU with StepGraphs(fake=True)


def step_graphs_of(denoiser: nn.Module, policy: Policy, compile: str, backend: str, fake: bool,
                   capture: bool = True, options: dict | None = None) -> StepGraphs:
    """The step graphs of ``policy`` on ``denoiser``, kept on the denoiser (the 8 most recent policies), so a later
    ``apply`` of the same policy replays what an earlier one captured — with its cache buffers, which the graphs
    read and write. :func:`release_step_graphs` frees them."""
    kept = denoiser.__dict__.setdefault("_frdiff_step_graphs", {})
    # the step kinds: which steps call the denoiser (mixing's λ = 0), hence which blocks ever reuse
    key = (tuple(policy.blocks), tuple(policy.granularity), tuple(policy.reuse), policy.keyframes.numpy().tobytes(),
           tuple(policy.keyframes.shape), tuple(policy.step_kinds()), policy.cache_dtype, compile, backend, fake,
           capture, options_key(options))
    graphs = kept.pop(key, None) or StepGraphs(fake=fake, capture=capture)
    kept[key] = graphs  # most recent last
    while len(kept) > 8:
        kept.pop(next(iter(kept)))
    return graphs


def release_step_graphs(pipe) -> None:
    """Free the whole-step CUDA graphs (and their cache buffers) kept on ``pipe``'s denoiser."""
    denoiser_of(pipe).__dict__.pop("_frdiff_step_graphs", None)


def attached_hooks(pipe) -> list[str]:
    """Names of FRDiff hooks still attached to ``pipe``'s denoiser (empty after every run)."""
    found = []
    for name, module in denoiser_of(pipe).named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            found += [f"{name or '<denoiser>'}:{h}" for h in registry.hooks if h.startswith(HOOK_PREFIX)]
    return found
