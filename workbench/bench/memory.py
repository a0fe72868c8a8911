"""``bench memory``: what a policy's caches hold (the seed paper's second open problem, memory of stored features),
predicted and measured, and what keeping them in a lower precision costs.

Per model and policy (uniform M = 2 at feature and whole-block granularity, with ``hold``, ``taylor1`` and
``taylor2``, and reduced NFE with ε forecast): the bytes :func:`frdiff.cache_bytes` predicts from one measured call,
the bytes the run actually held (:attr:`frdiff.RunReport.cache_bytes`), on CUDA the peak memory the run allocated
above the stock run's, and, for an fp32 model, the PSNR of the same policy with its caches in float16 and bfloat16
against the policy with fp32 caches (same seeds). Models: the shipped ``tiny-unet`` and ``tiny-dit``, and with
``gpu_sizes`` the real-size SD-1.5 UNet (512 px) and DiT-XL/2 (256 px) of ``bench gpu-speed`` (random weights, fp16;
sizes do not depend on training).
"""

from __future__ import annotations

import torch

import frdiff
from frdiff import make_preset

STEPS = 10
POLICIES = [("M=2 hold", dict(interval=2, reuse="hold"), "feature"),
            ("M=2 taylor1", dict(interval=2, reuse="taylor1"), "feature"),
            ("M=2 taylor2", dict(interval=2, reuse="taylor2"), "feature"),
            ("M=2 hold, whole blocks", dict(interval=2, reuse="hold"), "block"),
            ("M=2 taylor2, whole blocks", dict(interval=2, reuse="taylor2"), "block")]


def _policies(den, steps: int) -> list[tuple[str, frdiff.Policy]]:
    out = []
    for name, kw, gran in POLICIES:
        p = make_preset("uniform", den, steps, **kw)
        out.append((name, p.replaced(granularity=[gran] * len(p.blocks)) if gran == "block" else p))
    out.append(("reduced NFE M=2, ε taylor2", make_preset("reduced-nfe", den, steps, interval=2, reuse="taylor2")))
    return out


def _run(pipe, policy, seeds: list[int], steps: int, device: torch.device):
    """Images, the run's report and (CUDA) the peak bytes allocated during the run."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    ctx = frdiff.apply(pipe, policy) if policy is not None else frdiff.exclusive(pipe)
    with ctx as run:
        images = pipe([0] * len(seeds), num_inference_steps=steps, generator=gens, output_type="pt").images
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    return images.float().cpu(), (run.report() if policy is not None else None), peak


@torch.no_grad()
def memory_of(pipe, name: str, device: torch.device, steps: int = STEPS, seeds=(0, 1)) -> dict:
    """One model's rows (see the module docstring)."""
    from workbench.compare import measure_savings
    from workbench.metrics import compare_images

    den = frdiff.denoiser_of(pipe)
    savings = measure_savings(pipe)
    seeds = list(seeds)
    per_image = savings["batch"]
    _, _, stock_peak = _run(pipe, None, seeds, steps, device)
    rows = []
    for label, policy in _policies(den, steps):
        images, report, peak = _run(pipe, policy, seeds, steps, device)
        row = {"policy": label, "reuse": policy.reuse_summary(),
               "predicted_cache_bytes": frdiff.cache_bytes(policy, savings, batch=per_image * len(seeds)),
               "cache_bytes": report.cache_bytes}
        if peak is not None:
            row["peak_bytes_over_stock"] = peak - stock_peak
        if den.dtype == torch.float32:
            for dtype in ("float16", "bfloat16"):
                low, rep, _ = _run(pipe, policy.replaced(cache_dtype=dtype), seeds, steps, device)
                row[f"{dtype}_cache_bytes"] = rep.cache_bytes
                row[f"{dtype}_psnr_vs_fp32_cache"] = compare_images(images, low)["psnr"]
        rows.append(row)
    return {"model": name, "denoiser": type(den).__name__, "dtype": str(den.dtype).replace("torch.", ""),
            "images": len(seeds), "denoiser_batch": per_image * len(seeds), "steps": steps,
            "stock_peak_bytes": stock_peak, "rows": rows}


def bench_memory(repeats: int = 1, device: str | None = None, gpu_sizes: bool | None = None,
                 models: tuple[str, ...] = ("tiny-unet", "tiny-dit")) -> dict:
    """The ``memory`` suite (module docstring). ``gpu_sizes`` (default: when CUDA is there) adds SD-1.5 and
    DiT-XL/2 in fp16. ``repeats`` is accepted for the CLI's sake: sizes do not vary."""
    from workbench.bench.common import machine_info
    from workbench.bench.engine import build
    from workbench.models.zoo import load_pipeline

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu_sizes = dev.type == "cuda" if gpu_sizes is None else gpu_sizes
    report = {"suite": "memory", "machine": machine_info(), "device": str(dev), "models": []}
    for name in models:
        report["models"].append(memory_of(load_pipeline(name, device=dev), name, dev))
    if gpu_sizes:
        for name in ("sd15-unet", "dit-xl-2"):
            pipe = build(name, dev, torch.float16 if dev.type == "cuda" else torch.float32)
            report["models"].append(memory_of(pipe, name, dev, seeds=(0,)))
            del pipe
    return report
