"""What every benchmark suite shares: the machine a number was measured on, the shipped weights it was measured
with, and a median-of-repeats timer."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch


def machine_info() -> dict:
    """What the numbers were measured on."""
    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                torch=torch.__version__, threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    import diffusers

    info["diffusers"] = diffusers.__version__
    info["weights"] = shipped_weights_digest()
    return info


def shipped_weights_digest() -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of each shipped model's weight files, so a result names the weights it was
    measured on (the policy fingerprint names only the architecture)."""
    import hashlib

    from workbench.models.zoo import MODELS_DIR

    out = {}
    for folder in sorted(p for p in MODELS_DIR.iterdir() if p.is_dir() and any(p.rglob("*.safetensors"))):
        h = hashlib.sha256()
        for f in sorted(folder.rglob("*.safetensors")):
            h.update(f.read_bytes())
        out[folder.name] = h.hexdigest()[:16]
    return out


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times
