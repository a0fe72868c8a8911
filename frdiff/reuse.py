"""Feature-reuse hooks, one per block type (the FRDiff paper, "Feature reuse"), on diffusers' ``HookRegistry``.

Each hook wraps one stock module's ``forward`` (no class swapping). At a step where its block is a keyframe the
stock forward runs unchanged and the hook caches the block's heavy, timestep-independent part; at other steps it
skips that part and recomputes only the light remainder from the current inputs:

- :class:`ResnetFeatureHook` (``ResnetBlock2D``): caches ``conv1(act(norm1(x)))`` (after the block's up/down
  sampling); a reuse step recomputes the time-embedding add, ``norm2``, act, ``conv2`` and the shortcut of the
  current input.
- :class:`ResidualFeatureHook` (``Transformer2DModel``, SD's attention block): caches the residual branch,
  output − input; a reuse step returns current input + cache.
- :class:`SelfAttentionFeatureHook` (hooked on a transformer block's ``attn1``): caches the self-attention output
  *before* gating. The block's own forward still runs, so adaLN-Zero's shift/scale/gate come from the current
  timestep and class and the MLP branch is recomputed (DiT, as in FRDiff). For other transformer blocks (PixArt's, with
  cross-attention; plain ``BasicTransformerBlock``) the same rule applies: self-attention is reused, cross-attention
  and the feed-forward are recomputed — cross-attention depends on the changing hidden states, and the feed-forward
  is where adaLN-single's timestep modulation acts.
- :class:`WholeBlockHook` (``block`` granularity, any block): caches the whole output and skips the forward.

What a reuse step uses for the cached part is the block's reuse mode (policy version 2): ``hold`` keeps the value of
its last keyframe (FRDiff); ``taylor1`` / ``taylor2`` forecast it with the line / parabola through its last 2 / 3
keyframe values, evaluated at the current step (:func:`forecast`; TaylorSeer, arXiv 2503.06923). A cache is a
:data:`History` of those values, newest first.

A hook asks the shared :class:`ReuseState` whether its block is computed at the current step. The answer is a bool
(policy runs) or, for Auto-FR, a 0-d gate tensor g (1 = compute): then both paths run and the result is
g·computed + (1 − g)·reused, which is exact in the forward pass for hard gates and lets gradients reach g.
Cached tensors stay on the model's device (in the policy's cache dtype, if it sets one) and are dropped by
:meth:`ReuseState.clear` when the run ends; the state counts the bytes they hold.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from .blocks import find_blocks, first_tensor

HOOK_PREFIX = "frdiff"
STATIC_FORWARD = f"{HOOK_PREFIX}-static-forward"  # not a registry hook: compile mode's forward on a block's attn1


class ReuseState:
    """What every hook of one applied run shares: the current step, the keyframe decisions, how each block forecasts
    (``orders``: 0 = hold, 1 / 2 = the polynomial through its last 2 / 3 keyframe values), where a step lies on the
    forecast axis (``positions``), the cache dtype, and the bytes the caches hold now and at most (``held``, ``peak``).
    """

    def __init__(self, keyframes: torch.Tensor, orders: list[int] | None = None,
                 cache_dtype: torch.dtype | None = None):
        self.mask: list[list[bool]] = keyframes.tolist()  # [blocks][steps]; python lists: cheap to index per call
        self.orders = list(orders) if orders is not None else [0] * len(self.mask)
        self.cache_dtype = cache_dtype
        self.positions: list[float] | None = None  # x of each step on the forecast axis; None: the step index
        self.gates: torch.Tensor | None = None  # Auto-FR: [blocks, steps] hard straight-through gates
        self.hard: list[list[bool]] | None = None  # the same gates read once per Auto-FR iteration (forecasts)
        self.step = 0
        self.hooks: list[_ReuseHook] = []
        self.reused = 0  # block reuses in this run (for the report)
        self.held = 0  # bytes the caches hold now
        self.peak = 0  # the most they held since the state was made
        self.clone_values = False  # compile mode with CUDA graphs: cached values are copied out of the graphs' pool
        self.static_cache = False  # whole-step CUDA graphs: a cache is order + 1 buffers per block, written in place
        self.weights: torch.Tensor | None = None  # static cache: this step's forecast weights [blocks, slots]

    def decide(self, idx: int) -> bool | torch.Tensor:
        if self.gates is not None:
            return self.gates[idx, self.step]
        return self.mask[idx][self.step]

    def x(self) -> float:
        """The current step's position on the forecast axis."""
        return float(self.step) if self.positions is None else self.positions[self.step]

    def clear(self) -> None:
        for hook in self.hooks:
            hook.cache = None
        self.held = 0

    def account(self, old: History | None, new: History | None) -> None:
        self.held += history_bytes(new) - history_bytes(old)
        self.peak = max(self.peak, self.held)


# A cache: the last keyframe values of what a block caches and where on the forecast axis each was computed, newest
# first — ((value, x), ...), at most order + 1 of them. A value is a tensor or, for a module that returns several
# (SD3's and Flux's joint blocks and attentions: image and text streams), a tuple of tensors and ``None``s. Immutable,
# so a snapshot (Auto-FR's checkpointing) stays valid.
Value = torch.Tensor | tuple
History = tuple[tuple[Value, float], ...]


def _map(fn, *values):
    """``fn`` applied to the tensors of one or several values of the same structure (``None`` stays ``None``)."""
    if isinstance(values[0], tuple):
        return tuple(None if parts[0] is None else _map(fn, *parts) for parts in zip(*values, strict=True))
    return fn(*values)


def _tensors(value) -> list[torch.Tensor]:
    return [t for t in (value if isinstance(value, tuple) else (value,)) if t is not None]


def history_bytes(history: History | None) -> int:
    return sum(t.numel() * t.element_size() for v, _ in history or () for t in _tensors(v))


def remember(history: History | None, value: Value, x: float, order: int,
             dtype: torch.dtype | None = None) -> History:
    """``history`` with ``value`` (computed at ``x``) in front, keeping the ``order`` + 1 newest."""
    return ((value if dtype is None else _map(lambda v: v.to(dtype), value), x),) + (history or ())[:order]


def extrapolation_weights(xs: list[float], x: float) -> list[float]:
    """Lagrange weights w_j with p(x) = Σ_j w_j·f(x_j) for the polynomial through the points (x_j, f(x_j))."""
    out = []
    for j, xj in enumerate(xs):
        w = 1.0
        for m, xm in enumerate(xs):
            if m != j:
                w *= (x - xm) / (xj - xm)
        out.append(w)
    return out


def forecast(history: History, x: float, dtype: torch.dtype) -> Value:
    """The cached value at ``x``: the newest value (hold) or the polynomial through all of ``history`` evaluated at
    ``x`` (linear with two values, quadratic with three), in ``dtype`` (each tensor of a tuple value alike).

    Written as v₀ + Σ_{j≥1} w_j·(v_j − v₀) (the weights sum to 1): one ``lerp`` for the linear forecast.
    """
    if len(history) == 1:
        return _map(lambda v: v.to(dtype), history[0][0])
    return weighted(history, extrapolation_weights([xj for _, xj in history], x), dtype)


def weighted(history: History, w, dtype: torch.dtype) -> Value:
    """v₀ + Σ_{j≥1} w_j·(v_j − v₀) over ``history``'s values, newest first, in ``dtype``. ``w``: Python floats, or a
    1-d tensor on the values' device (whole-step CUDA graphs: the weights are data the captured step reads, not
    constants baked into it; 0-d views of it are ``lerp``'s and ``mul``'s weights, so nothing syncs)."""
    def combine(*vs):
        v0 = vs[0].to(dtype)
        out = torch.lerp(v0, vs[1].to(dtype), w[1])
        for j, v in enumerate(vs[2:], 2):
            out = out + w[j] * (v.to(dtype) - v0)
        return out

    return _map(combine, *(v for v, _ in history))


def static_forecast_weights(mask: list[list[bool]], orders: list[int], called: list[bool],
                            positions: list[float]) -> list[list[list[float]]]:
    """Whole-step CUDA graphs with forecasts: the weights ``[step][block][slot]`` that :func:`weighted` applies to a
    block's static history — its last ``order`` + 1 keyframe values, newest first — at each step, known before the
    run because the policy is static. A block's keyframes are the called steps (``called``: not skipped) its mask
    row marks, and the first; ``positions``: each step on the forecast axis. While a block has fewer keyframes than
    slots, the missing slots weigh 0 (a forecast of lower order; with one keyframe, the held value exactly); so do
    keyframe steps, whose weights nothing reads."""
    width = max(orders, default=0) + 1
    table = [[[0.0] * width for _ in mask] for _ in positions]
    for i, (row, order) in enumerate(zip(mask, orders, strict=True)):
        seen: list[float] = []  # the block's keyframe positions so far, newest first
        for s, x in enumerate(positions):
            if not called[s]:
                continue
            if row[s] or not seen:
                seen = [x] + seen[:order]
                continue
            table[s][i][:len(seen)] = extrapolation_weights(seen, x) if len(seen) > 1 else [1.0]
    return table


def wrapper(template):
    """A function putting a tensor into the structure of module output ``template`` (tensor, tuple or diffusers
    ``BaseOutput``), without holding on to the template's main tensor."""
    if isinstance(template, torch.Tensor):
        return lambda t: t
    if isinstance(template, tuple):
        rest = tuple(template[1:])
        return lambda t: (t,) + rest
    cls, key = type(template), next(iter(template.keys()))
    others = {k: v for k, v in template.items() if k != key}
    return lambda t: cls(**{key: t, **others})


def _blend(gate: torch.Tensor, computed: Value, cached: Value) -> Value:
    def blend(c, r):
        g = gate.to(c.dtype)
        return g * c + (1 - g) * r

    return _map(blend, computed, cached)


def split_output(out) -> tuple[Value | None, callable]:
    """A module output as ``(value, rebuild)``: the value a cache keeps — the main tensor of a tensor or a diffusers
    ``BaseOutput``, every tensor of a tuple (``None``s kept in place) — and the function that puts such a value back
    into the output's structure (the tuple's other elements as they were)."""
    if isinstance(out, tuple):
        keep = [isinstance(e, torch.Tensor) or e is None for e in out]
        value = tuple(e if k else None for e, k in zip(out, keep, strict=True))
        rest = tuple(e for e, k in zip(out, keep, strict=True) if not k)

        def rebuild(v):
            others = iter(rest)
            return tuple(part if k else next(others) for part, k in zip(v, keep, strict=True))

        return value, rebuild
    return first_tensor(out), wrapper(out)


class _ReuseHook(ModelHook):
    """A block's cache and the three things every rule does with it: keep a computed value, give the value a reuse
    step uses (held or forecast), and, under Auto-FR's gates, blend the two."""

    _is_stateful = True

    def __init__(self, state: ReuseState, idx: int, block: str):
        super().__init__()
        self.state, self.idx, self.block = state, idx, block
        self.order = state.orders[idx]
        self.cache: History | None = None
        state.hooks.append(self)

    def reset_state(self, module):
        """diffusers' reset of stateful hooks (a pipeline's ``maybe_free_model_hooks`` at the end of a call): the
        cache goes, except a static one — captured steps read and write its buffers by address, so it stays with
        them (a run's first step refills it)."""
        if not self.state.static_cache:
            self.cache = None
        return module

    def cached_tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (all slots, every stream of a tuple value)."""
        return [t for v, _ in self.cache or () for t in _tensors(v)]

    # Compile mode (frdiff.compiling): a CompiledBlockHook around the block sets ``static``, and before each call of
    # the compiled block ``phase`` ("keep" | "reuse") and ``given`` (the reuse value, forecast eagerly), so the
    # traced forward branches on constants only; after the call it commits ``captured`` to the cache.
    static = False
    inline = False  # compile="full": the rule runs inside one graph of the whole denoiser call (static cache)
    phase = "keep"
    given: Value | None = None
    captured: Value | None = None
    value_dtype: torch.dtype | None = None
    class_forward = None  # the hooked module's class forward (a plain function: dynamo traces it, not type(m))

    def new_forward(self, module, *args, **kwargs):
        if self.static:
            return self.static_forward(module, *args, **kwargs)
        return self.eager_forward(module, *args, **kwargs)

    def prepare(self) -> None:
        """Compile mode, before the block's compiled call: this step's phase and, at a reuse step, the value."""
        decision = self.state.decide(self.idx)
        if isinstance(decision, torch.Tensor):
            raise RuntimeError("Auto-FR's gated runs do not run in compile mode (use compile='off')")
        if self.cache is None or decision:
            self.phase, self.given = "keep", None
        else:
            self.phase = "reuse"
            self.state.reused += 1
            self.given = self._at_step(self.value_dtype)

    def _at_step(self, dtype: torch.dtype) -> Value:
        """The cached part at the current step, held or forecast, in ``dtype``. With a static cache the forecast's
        weights are this step's row of the state's device weights (:func:`static_forecast_weights`), and nothing
        reads the step (a graph of the whole call would be specialised on it)."""
        if self.state.static_cache:
            if self.order:
                return weighted(self.cache, self.state.weights[self.idx], dtype)
            return _map(lambda v: v.to(dtype), self.cache[0][0])
        return forecast(self.cache, self.state.x(), dtype)

    def reuse_value(self, like: torch.Tensor | None) -> Value:
        """The static rule at a reuse step: the value handed in (regional mode), or, ``inline``, the held or forecast
        value computed here, inside the graph of the whole call, in ``like``'s dtype (the cache's without one)."""
        if not self.inline:
            return self.given
        return self._at_step(like.dtype if like is not None else _tensors(self.cache[0][0])[0].dtype)

    def capture(self, value: Value) -> None:
        """The static rule at a keyframe: hand the value out (regional mode: :meth:`commit` keeps it after the
        call) or, ``inline``, write it into the cache's buffers here, inside the graph of the whole call."""
        if self.inline:
            self._check_cacheable(value)
            self.keep(value)
        else:
            self.captured = value

    def commit(self) -> None:
        """Compile mode, after the call: a keyframe's captured value joins the cache (cloned out of a CUDA graph's
        memory pool, which the next replay overwrites)."""
        if self.phase != "keep":
            self.given = None
            return
        value, self.captured = self.captured, None
        self._check_cacheable(value)
        if self.state.clone_values:
            value = _map(torch.clone, value)
        self.value_dtype = _tensors(value)[0].dtype
        self.keep(value)

    def _check_cacheable(self, value) -> None:
        parts = value if isinstance(value, tuple) else (value,)
        if not parts or not all(p is None or isinstance(p, torch.Tensor) for p in parts) or not _tensors(value):
            raise RuntimeError(f"block {self.block}: compile mode caches tensors or tuples of tensors; this block "
                               f"returns {type(value).__name__} (run it with compile='off')")

    def keep(self, value: Value) -> None:
        """A keyframe: ``value`` joins the cache. With a static cache (whole-step CUDA graphs) a block has
        ``order`` + 1 buffers, newest first, allocated at its first keyframe (each a copy of its value); a later
        keyframe shifts them by one and copies its value into the first, so a captured step reads and writes the
        same memory at every replay. Which of them hold real keyframes is the static weights' business."""
        if self.state.static_cache:
            if self.cache is not None:
                slots = [v for v, _ in self.cache]
                for j in range(len(slots) - 1, 0, -1):  # the oldest first: slot j takes slot j - 1's value
                    _map(lambda older, newer: older.copy_(newer), slots[j], slots[j - 1])
                _map(lambda buf, v: buf.copy_(v), slots[0], value)
                return
            dtype = self.state.cache_dtype
            value = _map(lambda v: v.detach().clone() if dtype is None else v.detach().to(dtype, copy=True), value)
            new = tuple((value if j == 0 else _map(torch.clone, value), self.state.x()) for j in range(self.order + 1))
            self.state.account(None, new)
            self.cache = new
            return
        new = remember(self.cache, value, self.state.x(), self.order, self.state.cache_dtype)
        self.state.account(self.cache, new)
        self.cache = new

    def reused(self, like: torch.Tensor | None) -> Value:
        """A reuse step: the cached part, held or forecast to this step, in ``like``'s dtype (the cache's own dtype
        when no tensor input is at hand)."""
        cached = _tensors(self.cache[0][0])[0]
        if like is not None:
            self._check_batch(like, cached)
        self.state.reused += 1
        return self._at_step(like.dtype if like is not None else cached.dtype)

    def gated(self, gate: torch.Tensor, computed: Value) -> Value:
        """Auto-FR: g·computed + (1 − g)·(the reuse value), and the cache updated as the hard gate says: at a
        computed step the blend joins the cache; at a reuse step it replaces the newest value (equal to it, with a
        gradient path to g). With hold (one value) both are the same: the cache becomes the blend."""
        blended = _blend(gate, computed, forecast(self.cache, self.state.x(), _tensors(computed)[0].dtype))
        hard = self.state.hard[self.idx][self.state.step] if self.order else True
        if hard:
            self.keep(blended)
        else:  # the newest value's forward value, the blend's gradient (a forecast at this step is not that value)
            newest, x = self.cache[0]
            new = ((_map(lambda v, b: v + (b - b.detach()).to(v.dtype), newest, blended), x),) + self.cache[1:]
            self.state.account(self.cache, new)
            self.cache = new
        return blended

    def _check_batch(self, current: torch.Tensor, cached: torch.Tensor) -> None:
        if current.shape[0] != cached.shape[0]:
            raise RuntimeError(f"block {self.block}: batch size changed from {cached.shape[0]} at its keyframe to "
                               f"{current.shape[0]}; a policy run must keep one batch for all its steps")


class ResnetFeatureHook(_ReuseHook):
    """``ResnetBlock2D``: reuse ``conv1(act(norm1(x)))`` (held or forecast), recompute the time-dependent rest."""

    def initialize_hook(self, module):
        self._capture = False
        self._captured = None

        def grab(_m, _a, out):
            if self._capture:
                self._captured = out

        self._handle = module.conv1.register_forward_hook(grab)
        return module

    def deinitalize_hook(self, module):  # (sic: diffusers' spelling)
        self._handle.remove()
        return module

    def static_forward(self, module, input_tensor, temb, *args, **kwargs):
        if self.phase == "reuse":
            return resnet_light(module, input_tensor, temb, self.reuse_value(input_tensor))
        h = resnet_heavy(module, input_tensor)
        self.capture(h)
        return resnet_light(module, input_tensor, temb, h)

    @torch.compiler.disable(recursive=False)  # keep the keyframe decision out of compiled graphs
    def eager_forward(self, module, input_tensor, temb, *args, **kwargs):
        decision = self.state.decide(self.idx)
        if self.cache is None or decision is True:
            self._capture = True
            try:
                out = self.fn_ref.original_forward(input_tensor, temb, *args, **kwargs)
            finally:
                self._capture = False
            self.keep(self._captured)
            self._captured = None
            return out
        if decision is False:
            return resnet_light(module, input_tensor, temb, self.reused(input_tensor))
        return resnet_light(module, input_tensor, temb, self.gated(decision, resnet_heavy(module, input_tensor)))


def resnet_heavy(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The cached part of ``ResnetBlock2D.forward``: ``conv1(resample(act(norm1(x))))``."""
    h = m.nonlinearity(m.norm1(x))
    if m.upsample is not None:
        h = m.upsample(h)
    elif m.downsample is not None:
        h = m.downsample(h)
    return m.conv1(h)


def resnet_light(m: nn.Module, x: torch.Tensor, temb: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    """The rest of ``ResnetBlock2D.forward`` given the heavy part ``h`` (diffusers 0.42's order of operations)."""
    if m.upsample is not None:
        x = m.upsample(x)
    elif m.downsample is not None:
        x = m.downsample(x)
    if m.time_emb_proj is not None and temb is not None:
        if not m.skip_time_act:
            temb = m.nonlinearity(temb)
        temb = m.time_emb_proj(temb)[:, :, None, None]
    if m.time_embedding_norm == "default":
        if temb is not None:
            h = h + temb
        h = m.norm2(h)
    elif m.time_embedding_norm == "scale_shift":
        scale, shift = torch.chunk(temb, 2, dim=1)
        h = m.norm2(h) * (1 + scale) + shift
    else:
        h = m.norm2(h)
    h = m.conv2(m.dropout(m.nonlinearity(h)))
    if m.conv_shortcut is not None:
        x = m.conv_shortcut(x)
    return (x + h) / m.output_scale_factor


class ResidualFeatureHook(_ReuseHook):
    """``Transformer2DModel``, or an ``Attention`` used as a block: reuse the residual branch (output − input), held
    or forecast; output = current input + that branch."""

    def static_forward(self, module, hidden_states, *args, **kwargs):
        if self.phase == "reuse":
            return _restructure(module, kwargs, hidden_states + self.reuse_value(hidden_states))
        out = self.class_forward(module, hidden_states, *args, **kwargs)
        self.capture(first_tensor(out) - hidden_states)
        return out

    @torch.compiler.disable(recursive=False)  # keep the keyframe decision out of compiled graphs
    def eager_forward(self, module, hidden_states, *args, **kwargs):
        decision = self.state.decide(self.idx)
        if self.cache is None or decision is not False:
            out = self.fn_ref.original_forward(hidden_states, *args, **kwargs)
            self._wrap = wrapper(out)
            branch = first_tensor(out) - hidden_states
            if self.cache is not None and isinstance(decision, torch.Tensor):
                return self._wrap(hidden_states + self.gated(decision, branch))
            self.keep(branch)
            return out
        return self._wrap(hidden_states + self.reused(hidden_states))


class WholeBlockHook(_ReuseHook):
    """``block`` granularity: reuse the block's whole output, held or forecast — every tensor of it when the block
    returns several (SD3's and Flux's double blocks: the text and the image stream) — and skip its forward."""

    def static_forward(self, module, *args, **kwargs):
        if self.phase == "reuse":
            first = args[0] if args else next(iter(kwargs.values()), None)
            return self.reuse_value(first if isinstance(first, torch.Tensor) else None)
        out = self.class_forward(module, *args, **kwargs)
        self.capture(out)
        return out

    @torch.compiler.disable(recursive=False)  # keep the keyframe decision out of compiled graphs
    def eager_forward(self, module, *args, **kwargs):
        decision = self.state.decide(self.idx)
        if self.cache is None or decision is not False:
            out = self.fn_ref.original_forward(*args, **kwargs)
            value, self._rebuild = split_output(out)
            if self.cache is not None and isinstance(decision, torch.Tensor):
                return self._rebuild(self.gated(decision, value))
            self.keep(value)
            return out
        first = args[0] if args else next(iter(kwargs.values()), None)
        return self._rebuild(self.reused(first if isinstance(first, torch.Tensor) else None))


class SelfAttentionFeatureHook(WholeBlockHook):
    """A transformer block's ``attn1`` (or ``attn``): reuse the attention output before the block gates it — for
    SD3's and Flux's joint attention both outputs, the image and the text stream's. The rule is the whole-output rule
    applied one level down, on the attention module instead of the block."""


def _restructure(module: nn.Module, kwargs: dict, value: torch.Tensor):
    """A residual block's reuse output in the structure its forward returns (compile mode, where no keyframe output
    is at hand to copy it from): a tensor for an ``Attention``, ``(value,)`` for ``return_dict=False``, else the
    model output class."""
    if isinstance(module, Attention):
        return value
    if not kwargs.get("return_dict", True):
        return (value,)
    return Transformer2DModelOutput(sample=value)


def hook_target(block: nn.Module, kind: str, granularity: str) -> tuple[nn.Module, type[_ReuseHook]]:
    """The module to hook and the hook class for a block of ``kind`` at ``granularity``."""
    if granularity == "block" or kind == "generic":
        return block, WholeBlockHook
    if kind == "resnet":
        return block, ResnetFeatureHook
    if kind == "attention":
        return block, ResidualFeatureHook
    if kind in ("dit_block", "transformer_block"):
        attn = getattr(block, "attn1", None) or getattr(block, "attn", None)
        if attn is None:
            return block, WholeBlockHook
        return attn, SelfAttentionFeatureHook
    raise ValueError(f"no reuse rule for block kind {kind!r}")


def heavy_module_name(block: str, block_module: nn.Module, kind: str, granularity: str) -> str:
    """``named_modules`` path of the part a reuse step skips (for FLOP-based speedup prediction)."""
    target, hook_cls = hook_target(block_module, kind, granularity)
    if hook_cls is ResnetFeatureHook:
        return f"{block}.conv1"
    if hook_cls is SelfAttentionFeatureHook:
        suffix = "attn1" if getattr(block_module, "attn1", None) is target else "attn"
        return f"{block}.{suffix}"
    return block


def attach(module: nn.Module, hook: ModelHook, name: str) -> None:
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)


def attach_reuse_hooks(denoiser: nn.Module, blocks: list[str], granularity: list[str], state: ReuseState, tag: str,
                       attached: list[tuple[nn.Module, str]], skip: list[bool] | None = None) -> None:
    """Attach block i's reuse hook (row i of ``state``) for every block of ``blocks`` not marked in ``skip``.

    Each ``(module, hook name)`` is appended to ``attached`` as soon as it is attached, so the caller's cleanup
    (:func:`detach_all`) also covers a failure half-way.
    """
    modules = dict(denoiser.named_modules())
    kinds = dict(find_blocks(denoiser))
    for i, (name, gran) in enumerate(zip(blocks, granularity, strict=True)):
        if skip is not None and skip[i]:
            continue
        target, hook_cls = hook_target(modules[name], kinds.get(name, "generic"), gran)
        hook_name = f"{HOOK_PREFIX}-{tag}-{i}"
        attach(target, hook_cls(state, i, name), hook_name)
        attached.append((target, hook_name))


def detach_all(attached: list[tuple[nn.Module, str]]) -> None:
    """Remove the hooks in ``attached``, last attached first."""
    for module, hook_name in reversed(attached):
        detach(module, hook_name)


def detach(module: nn.Module, name: str) -> None:
    """Remove hook ``name``; drop the registry (and the forward it installed) when it was the last hook."""
    if name == STATIC_FORWARD:  # compile mode's rule inside a block (frdiff.compiling): the stock forward again
        module.__dict__.pop("forward", None)
        module.__dict__.pop("_frdiff_static", None)
        return
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    registry.remove_hook(name, recurse=False)
    if not registry.hooks:
        module.__dict__.pop("forward", None)
        del module._diffusers_hook
