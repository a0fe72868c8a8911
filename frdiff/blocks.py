"""Block discovery: which modules of a denoiser are the units FRDiff caches and the workbench records.

A *block* is a module path from ``named_modules()``. Discovery is structural, not a list of names: a module is a
block when its class is one of diffusers' building blocks (``ResnetBlock2D``, ``Transformer2DModel``, a transformer
block such as DiT's or PixArt's ``BasicTransformerBlock``, or an ``Attention`` used as a UNet block) and it is not
inside another block. A denoiser built from none of these falls back to the elements of its innermost
``nn.ModuleList``\\s -- the repeated units of any architecture.

FLOP shares are measured with ``torch.utils.flop_counter.FlopCounterMode`` on one real forward, not estimated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Class name → kind. Kinds decide which feature-reuse rule applies (the FRDiff paper, "Feature reuse").
BLOCK_KINDS: dict[str, str] = {
    "ResnetBlock2D": "resnet",
    "Transformer2DModel": "attention",
    "BasicTransformerBlock": "transformer_block",
    "DiTTransformerBlock": "transformer_block",
    "JointTransformerBlock": "transformer_block",
    "FluxTransformerBlock": "transformer_block",
    "FluxSingleTransformerBlock": "transformer_block",
}
# Used as a block only where it stands in a ModuleList of its own (UNet2DModel's attention blocks).
_LIST_ONLY_KINDS = {"Attention": "attention"}


@dataclass(frozen=True)
class BlockInfo:
    """One hookable block.

    name: ``named_modules()`` path; type: class name; kind: resnet | attention | transformer_block | generic;
    output_shape: shape of its (first) output for the example input; parameters: count;
    flops: FLOPs of one denoiser call spent inside it; flop_share: flops / the whole call's FLOPs.
    """

    name: str
    type: str
    kind: str
    output_shape: tuple[int, ...]
    parameters: int
    flops: int
    flop_share: float



def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter(**kwargs) -> FlopCounterMode:
    """``FlopCounterMode`` that also counts attention on the CPU.

    torch's FLOP table covers the CUDA kernels behind ``scaled_dot_product_attention`` but not the CPU one
    (``aten._scaled_dot_product_flash_attention_for_cpu``), so attention would count 0 FLOPs on a CPU and every
    attention block's share would come out too small there. The CPU kernel gets the same formula as the CUDA ones.
    """
    from torch.utils.flop_counter import flop_registry

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {op: _sdpa_cpu_flops} if op is not None and op not in flop_registry else {}
    return FlopCounterMode(display=False, custom_mapping=mapping, **kwargs)

def _kind(module: nn.Module, parent: nn.Module | None) -> str | None:
    cls = type(module).__name__
    if cls in BLOCK_KINDS:
        kind = BLOCK_KINDS[cls]
        if kind == "transformer_block" and getattr(module, "norm_type", None) == "ada_norm_zero":
            return "dit_block"  # adaLN-Zero: the DiT reuse rule applies
        return kind
    if cls in _LIST_ONLY_KINDS and isinstance(parent, nn.ModuleList):
        return _LIST_ONLY_KINDS[cls]
    return None


# A UNet registers its (empty) down and up block lists before its mid block, and a level's attentions before its
# resnets, so ``named_modules()`` lists down → up → mid and attentions first; it runs down → mid → up, and in each
# level resnet i before attention i. Blocks are listed in the order they run (the same as discover_blocks finds).
_RUN_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
_SUB_ORDER = {"resnets": 0, "attentions": 1}


def _run_key(name: str) -> tuple:
    parts = name.split(".")
    if parts[0] not in _RUN_ORDER:
        return ()  # not a UNet block: kept where named_modules() put it (the sort is stable)
    level = int(parts[1]) if parts[0] != "mid_block" and len(parts) > 1 and parts[1].isdigit() else 0
    rest = parts[1:] if parts[0] == "mid_block" else parts[2:]
    if len(rest) >= 2 and rest[0] in _SUB_ORDER and rest[1].isdigit():
        return (_RUN_ORDER[parts[0]], level, int(rest[1]), _SUB_ORDER[rest[0]])
    return (_RUN_ORDER[parts[0]], level)


def find_blocks(model: nn.Module) -> list[tuple[str, str]]:
    """``(name, kind)`` of every block, outermost first, in the order a forward runs them (``named_modules()``
    order, with a UNet's mid block between its down and up blocks)."""
    parents: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        for child_name, _ in module.named_children():
            parents[f"{name}.{child_name}" if name else child_name] = module
    found: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(b + ".") for b, _ in found):
            continue
        kind = _kind(module, parents.get(name))
        if kind is not None:
            found.append((name, kind))
    if found:
        return sorted(found, key=lambda nk: _run_key(nk[0]))
    # Fallback for unknown architectures: elements of ModuleLists that hold no ModuleList themselves.
    for name, module in model.named_modules():
        if isinstance(parents.get(name), nn.ModuleList) and not any(
            isinstance(m, nn.ModuleList) for m in module.modules()
        ):
            found.append((name, "generic"))
    return found


def denoiser_of(pipe) -> nn.Module:
    """The network a pipeline calls every step (``unet`` or ``transformer``); a module is its own denoiser."""
    if isinstance(pipe, nn.Module):
        return pipe
    for name in ("unet", "transformer", "prior"):
        module = getattr(pipe, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{type(pipe).__name__} has no unet or transformer (the denoiser FRDiff hooks)")


class _StopCapture(Exception):
    """Raised inside the denoiser's pre-hook to end a pipeline call once its inputs are captured."""


def capture_denoiser_call(pipe, call: Callable[[], object]) -> tuple[tuple, dict]:
    """Run ``call`` (a pipeline call) only until its first denoiser call; return that call's ``(args, kwargs)``."""
    denoiser = denoiser_of(pipe)
    captured: dict = {}

    def grab(_m, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        raise _StopCapture

    handle = denoiser.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        call()
    except _StopCapture:
        pass
    finally:
        handle.remove()
    if "args" not in captured:
        raise RuntimeError("the pipeline call never reached its denoiser")
    return captured["args"], captured["kwargs"]


def first_tensor(output) -> torch.Tensor | None:
    """The main tensor of a module's output: the tensor itself, the first of a tuple, or ``.sample``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return first_tensor(output[0])
    sample = getattr(output, "sample", None)
    return sample if isinstance(sample, torch.Tensor) else None


def stream_tensor(output) -> torch.Tensor | None:
    """The image stream of a block's output: :func:`first_tensor`, except that of a tuple the last tensor — SD3's and
    Flux's joint blocks return ``(encoder_hidden_states, hidden_states)`` (the last joint block ``(None, hidden)``),
    ``Transformer2DModel`` with ``return_dict=False`` a 1-tuple."""
    if isinstance(output, (tuple, list)):
        tensors = [t for t in output if isinstance(t, torch.Tensor)]
        return tensors[-1] if tensors else None
    return first_tensor(output)


@torch.no_grad()
def discover_blocks(model: nn.Module, *args, **kwargs) -> list[BlockInfo]:
    """Blocks of ``model`` in execution order, with output shapes, parameters and FLOP shares of one forward.

    Pass the denoiser's real inputs (e.g. captured from one pipeline step) so shapes and FLOPs are those of use.
    """
    blocks = find_blocks(model)
    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}  # insertion order = execution order
    handles = []
    for name, _ in blocks:

        def hook(_m, _a, out, name=name):
            t = stream_tensor(out)
            if name not in shapes:
                shapes[name] = tuple(t.shape) if t is not None else ()

        handles.append(modules[name].register_forward_hook(hook))
    try:
        with flop_counter(depth=None) as counter:
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    total = sum(counts.get("Global", {}).values()) or 1
    kinds = dict(blocks)
    order = list(shapes) + [name for name, _ in blocks if name not in shapes]  # never-called blocks last
    infos = []
    for name in order:
        kind = kinds[name]
        flops = int(sum(counts.get(f"{root}.{name}", {}).values()))
        infos.append(
            BlockInfo(name=name, type=type(modules[name]).__name__, kind=kind, output_shape=shapes.get(name, ()),
                      parameters=sum(p.numel() for p in modules[name].parameters()), flops=flops,
                      flop_share=flops / total)
        )
    return infos
