"""Peers in the quality benchmarks: the published DeepCache package, the engine's ``deepcache`` preset and
diffusers' own caches (``diffusers.hooks``: FirstBlockCache, PyramidAttentionBroadcast, FasterCache, TaylorSeer,
MagCache, SeaCache), each attached for one pipeline call. A peer that does not apply to a model is listed with the
reason (the exception it raises, or that it hooks nothing, or that its images equal the stock run's)."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable

import torch

import frdiff
from frdiff import make_preset
from workbench.bench.methods import TRAIN_SEEDS, Method, NotApplicable, run_method, seed_conditions

DEEPCACHE_INTERVALS = (2, 3, 5)


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


REPEATED_BLOCK = "BasicTransformerBlock"  # regional compilation's block where a model declares none (DiT)


@contextlib.contextmanager
def compiled_repeated_blocks(den, backend: str = "inductor", options: dict | None = None):
    """diffusers' regional compilation for the peers' compiled mode, undone on exit: ``compile_repeated_blocks``
    (each module of a class in the model's ``_repeated_blocks`` compiled in place, ``module.compile()``). DiT's class
    declares none; its transformer blocks (:data:`REPEATED_BLOCK`, the class SD-1.5's UNet declares) are compiled
    alike. Not ``fullgraph``: a peer's per-step decision (``torch.compiler.disable``d in diffusers' hooks) breaks the
    graph where it sits, which is how those caches run compiled. Dynamo's in-memory caches are reset on entry and
    exit: a peer's hook code compiled at another image count would count towards dynamo's recompile limit, past
    which it silently runs eagerly (a benchmark's concern; the blocks' earlier compile state is put back).
    ``options``: inductor's, as FRDiff's compile modes of the same run get them."""
    names = set(getattr(den, "_repeated_blocks", None) or ()) or {REPEATED_BLOCK}
    blocks = [m for m in den.modules() if type(m).__name__ in names]
    if not blocks:
        raise NotApplicable(f"{type(den).__name__} has no {', '.join(sorted(names))} to compile")
    before = [m._compiled_call_impl for m in blocks]
    kwargs = {"backend": backend, **({"options": options} if options else {})}
    torch._dynamo.reset()
    try:
        if getattr(den, "_repeated_blocks", None):
            den.compile_repeated_blocks(**kwargs)
        else:
            for m in blocks:
                m.compile(**kwargs)
        yield blocks
    finally:
        for m, impl in zip(blocks, before, strict=True):
            m._compiled_call_impl = impl
        torch._dynamo.reset()


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

        den = frdiff.denoiser_of(pipe)
        current = {"t": 999}

        def note_timestep(_module, args, kwargs):
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            if t is not None:
                current["t"] = int(torch.as_tensor(t).flatten()[0])

        pre = den.register_forward_pre_hook(note_timestep, with_kwargs=True)
        before = _hook_names(den)
        own = {m for m in den.modules() if "forward" in vars(m)}
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
            for m in den.modules():  # removing a hook puts the class forward back as an instance attribute
                bound = vars(m).get("forward")
                if m not in own and getattr(bound, "__func__", None) is type(m).forward:
                    del m.forward

    return peer


def _calibrated_mag_ratios(pipe, steps: int, seeds: list[int]) -> list[float]:
    """MagCache's calibration pass (it prints the ratios; they are read back from its output as JSON)."""
    from diffusers.hooks import MagCacheConfig

    peer = diffusers_cache_peer("apply_mag_cache", lambda _t: MagCacheConfig(calibrate=True,
                                                                            num_inference_steps=steps))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        run_method(pipe, Method("calibrate", "", False, steps, peer=peer), seed_conditions(pipe, seeds),
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
    seeds = [TRAIN_SEEDS]
    labels = seed_conditions(pipe, seeds)
    stock, _ = run_method(pipe, Method("stock", "", False, steps), labels, seeds)
    cached, _ = run_method(pipe, Method("peer", "", False, steps, peer=peer), labels, seeds)
    if torch.equal(stock.images, cached.images):
        return "runs, but its images equal the stock run's on a probe seed (it skips nothing here)"
    return None


def peer_methods(pipe, steps: int, deepcache: bool = True) -> tuple[list[Method], list[dict]]:
    """The peers that run on ``pipe`` and, for each that does not, ``{"name", "family", "reason"}``."""
    den = frdiff.denoiser_of(pipe)
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
