"""The data prediction x̂₀ that a denoiser output implies at a step: ε_key in the policy's ``skip_space`` ``"data"``.

A scheduler of the DDPM family noises as x_t = α_t·x₀ + σ_t·ε; flow matching as x_t = (1 − σ_t)·x₀ + σ_t·ε. Whatever
the model predicts (ε, v, x₀ or the flow velocity), x̂₀ is affine in the output at a given step:
x̂₀ = a_s·x_t + b_s·output, and back: output = (x̂₀ − a_s·x_t) / b_s. :func:`data_coefficients` reads (a_s, b_s)
for every step of a run from the scheduler once (host-side floats, so the step loop does no device→host copy);
:func:`to_data` and :func:`from_data` apply them. Multistep solvers (DPM-Solver++, UniPC) build their update from
x̂₀ differences; holding or forecasting x̂₀ at a skipped step, and turning it back into an output with that step's
own x_t, keeps those differences consistent where holding or forecasting ε does not (docs/engine.md, "Under other
schedulers").

Models with a learned variance (DiT-XL/2: twice the input's channels) convert the first half of the channels; the
variance half is held or forecast as it is.
"""

from __future__ import annotations

import math

import torch

from .policy import PolicyError

PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow_prediction")


def check_scheduler(scheduler) -> None:
    """Refuse, before a run, schedulers whose x̂₀ is not one of the affine rules here: EDM-preconditioned ones
    (c_in, c_skip, c_out with ``sigma_data``: EDM Euler/DPM-Solver++, consistency models) and unknown prediction
    types. Noise levels are read at the run's first step (:func:`data_coefficients`)."""
    if scheduler is None:
        raise PolicyError(["skip_space 'data' needs the pipeline's scheduler for the noise level of each step; apply "
                           "the policy to the pipeline, not to its denoiser (or use skip_space 'output')"])
    if "sigma_data" in _config(scheduler):
        raise PolicyError([f"skip_space 'data' does not support {type(scheduler).__name__}: its model output is "
                           f"EDM-preconditioned (sigma_data), not ε, v or x̂₀ (use skip_space 'output')"])
    kind = _prediction(scheduler)
    if kind not in PREDICTIONS:
        raise PolicyError([f"skip_space 'data' does not know prediction_type {kind!r} (knows "
                           f"{', '.join(PREDICTIONS)}); use skip_space 'output'"])


def _config(scheduler) -> dict:
    return getattr(scheduler, "config", {}) or {}


def _flow(scheduler) -> bool:
    """Whether the scheduler noises by flow matching, x_t = (1 − σ)·x₀ + σ·ε."""
    return type(scheduler).__name__.startswith("FlowMatch") or bool(_config(scheduler).get("use_flow_sigmas"))


def _prediction(scheduler) -> str:
    """What the model predicts: the config's ``prediction_type``; flow-matching schedulers' models predict the
    velocity (their configs often name none, or ``epsilon``)."""
    kind = _config(scheduler).get("prediction_type") or "epsilon"
    return "flow_prediction" if _flow(scheduler) and kind == "epsilon" else kind


def _levels(scheduler, steps: int) -> tuple[list[float], list[float]]:
    """Per step (α_s, σ_s) of x_t = α·x₀ + σ·ε: from the scheduler's VE or flow ``sigmas``, else from
    ``alphas_cumprod`` at integer timesteps."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) >= steps:
        sig = [float(v) for v in torch.as_tensor(sigmas[:steps]).double().cpu().tolist()]
        if _flow(scheduler):  # x_t = (1 − σ)·x₀ + σ·ε
            return [1.0 - v for v in sig], sig
        alphas = [1.0 / math.sqrt(1.0 + v * v) for v in sig]  # VE σ: x_t/√(1+σ²) is the VP x_t the model sees
        return alphas, [v * a for v, a in zip(sig, alphas, strict=True)]
    cumprod = getattr(scheduler, "alphas_cumprod", None)
    timesteps = getattr(scheduler, "timesteps", None)
    if cumprod is not None and timesteps is not None and len(timesteps) == steps:
        ac = torch.as_tensor(cumprod).double().cpu()
        ts = torch.as_tensor(timesteps).double().cpu()
        if bool((ts == ts.round()).all()) and bool(((ts >= 0) & (ts < len(ac))).all()):
            a = ac[ts.long()]
            return a.sqrt().tolist(), (1.0 - a).sqrt().tolist()
    raise PolicyError([f"skip_space 'data' needs the noise level of every step; {type(scheduler).__name__} exposes "
                       f"neither sigmas nor alphas_cumprod with {steps} integer timesteps (use skip_space 'output')"])


def data_coefficients(scheduler, steps: int) -> list[tuple[float, float]]:
    """Per step s, (a_s, b_s) with x̂₀ = a_s·x_t + b_s·output, for the scheduler as set for this run (which must
    start at step 0: an img2img or refiner run that begins later is refused)."""
    check_scheduler(scheduler)
    begin = getattr(scheduler, "begin_index", None)
    if begin:
        raise PolicyError([f"skip_space 'data' needs a run that starts at the schedule's first step; this one begins "
                           f"at step {begin} (img2img, a refiner); use skip_space 'output'"])
    kind = _prediction(scheduler)
    alphas, sigmas = _levels(scheduler, steps)
    out = []
    for a, s in zip(alphas, sigmas, strict=True):
        if kind == "epsilon":
            coef = (1.0 / a, -s / a) if a > 0 else (math.nan, math.nan)
        elif kind == "v_prediction":
            coef = (a, -s)
        elif kind == "flow_prediction":  # v = ε − x₀  →  x₀ = x_t − σ·v
            coef = (1.0, -s)
        else:
            coef = (0.0, 1.0)
        if not all(math.isfinite(c) for c in coef) or coef[1] == 0.0:
            raise PolicyError([f"skip_space 'data': the output does not determine x̂₀ at a step with α = {a:.3g}, "
                               f"σ = {s:.3g} ({kind}); use skip_space 'output'"])
        out.append(coef)
    return out


def _split(output: torch.Tensor, x: torch.Tensor):
    """(the output's x̂₀-determining channels, the rest or None, the noisy latents x_t within the input)."""
    if output.shape == x.shape:
        return output, None, x
    same_layout = output.dim() >= 2 and x.dim() == output.dim() and output.shape[0] == x.shape[0]
    if same_layout and output.shape[2:] == x.shape[2:]:
        c_out, c_in = output.shape[1], x.shape[1]
        if c_out == 2 * c_in:  # learned variance: its half is not converted
            return output[:, :c_in], output[:, c_in:], x
        if c_in > c_out:  # inpainting-style inputs: the latents first, then mask and masked-image channels
            return output, None, x[:, :c_out]
    raise PolicyError([f"skip_space 'data' needs the denoiser output to have its input's shape (or twice its "
                       f"channels); input {tuple(x.shape)}, output {tuple(output.shape)}"])


def to_data(output: torch.Tensor, x: torch.Tensor, coef: tuple[float, float]) -> torch.Tensor:
    """x̂₀ = a·x_t + b·output, in float32 (or wider): rounding x̂₀ to a half-precision model's dtype here and
    dividing by a small b later would amplify it; the cache keeps its own dtype (the caller casts)."""
    main, rest, xt = _split(output, x)
    wide = torch.promote_types(main.dtype, torch.float32)
    x0 = coef[0] * xt.to(wide) + coef[1] * main.to(wide)
    return x0 if rest is None else torch.cat([x0, rest.to(wide)], 1)


def from_data(x0: torch.Tensor, x: torch.Tensor, coef: tuple[float, float], dtype: torch.dtype) -> torch.Tensor:
    """The output that gives x̂₀ at x_t: (x̂₀ − a·x_t) / b, computed in float32 (or wider), returned in ``dtype``."""
    main, rest, xt = _split(x0, x)
    wide = torch.promote_types(main.dtype, torch.float32)
    out = ((main.to(wide) - coef[0] * xt.to(wide)) / coef[1]).to(dtype)
    return out if rest is None else torch.cat([out, rest.to(dtype)], 1)
