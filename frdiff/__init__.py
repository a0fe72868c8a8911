"""FRDiff: feature reuse, score mixing and keyframe policies on stock diffusers pipelines (arXiv 2312.03517).

    import frdiff
    policy = frdiff.make_preset("uniform", pipe.unet, steps=50, interval=2, mix=True)
    with frdiff.apply(pipe, policy) as run:
        images = pipe(...).images

Depends on torch and diffusers only.
"""

from .apply import FRRun, RunReport, apply, attached_hooks, exclusive, release_step_graphs
from .blocks import denoiser_of, discover_blocks, find_blocks
from .policy import REUSE_MODES, Mixing, Policy, PolicyError, model_fingerprint
from .presets import PRESETS, make_preset, threshold_keyframes, threshold_policy
from .speedup import cache_bytes, measure_savings, predicted_speedup, step_costs

__all__ = [
    "FRRun", "Mixing", "PRESETS", "Policy", "PolicyError", "REUSE_MODES", "RunReport", "apply", "attached_hooks",
    "cache_bytes", "denoiser_of", "discover_blocks", "exclusive", "find_blocks", "make_preset", "measure_savings",
    "model_fingerprint", "predicted_speedup", "release_step_graphs", "step_costs", "threshold_keyframes",
    "threshold_policy",
]
