"""Auto-FR: learn which steps (and, ours, which blocks) recompute, by gradient descent through the sampler.

The FRDiff paper, "Auto-FR": the model is frozen; one gate logit g_t per step, shared by all blocks (step 0 always
computed). Straight-through gates: the forward pass uses round(σ(g)) — exactly the hard policy — and the backward
pass the gradient of σ(g). At a computed step a block's cache is refreshed, otherwise reused. The loss is the MSE
between the final sample with feature reuse and the full-compute sample from the same noise, plus a term that
pushes gates towards reuse, and gradients flow through the whole sampling chain.

What this module adds to the paper's recipe:

- ``gates="block"``: one gate per block × step instead of per step (the paper's are shared by all blocks).
- A compute target instead of a hand-tuned penalty weight. Compute fraction C = Σ step costs / steps with the
  engine's cost model (:func:`frdiff.speedup.step_costs`): C = 1 − (1/S)·Σ_{b,s} (1 − g_{b,s})·share_b, where
  share_b is the FLOP share block b's reuse skips. Each gate's penalty is therefore weighted by its block's FLOP
  share. The loss is log MSE + μ·(C − target) with a Lagrange multiplier μ ≥ 0 updated by multiplicative dual
  ascent, μ ← μ·exp(κ·(C_hard − target)/target): μ grows while the hard mask costs more than the target and shrinks
  while it costs less, so the optimisation steers to the target without a weight tuned per model. μ starts where
  the penalty's gradient matches the quality term's (median over gates). log MSE (= −PSNR·ln10/10 up to a
  constant) rather than MSE because the MSE of a 2-image minibatch varies ~10× between batches of seeds; the log
  makes each batch's gradient scale-free. With ``target_compute=None`` the paper's loss, MSE + w·Σ ReLU(2σ(g) − 1),
  is used unchanged.
- The exported mask is the *budget projection* of the learned logits: step 0, then gates in decreasing logit order,
  each taken when it still fits under the target (a gate that does not fit is skipped, cheaper ones after it may
  still fit). The rounded mask the last iteration ran with oscillates around the target (that is what the
  multiplier does); the projection meets the target and spends it, with the logits as the learned ranking. Without
  a target the rounded mask is exported as in the paper.
- The hooks are the engine's own (:mod:`frdiff.reuse`), driven by a gate tensor: a hook blends
  g·computed + (1 − g)·cached, which for hard gates is exactly what a policy run computes, so the trained mask is
  exported as an ordinary :class:`~frdiff.policy.Policy` (mixing off) and validated through :func:`frdiff.apply`.
- Optional gradient checkpointing per step (``torch.utils.checkpoint``): each step is recomputed in the backward
  pass from its input sample and the block caches it started with, so memory holds one step's activations.

"Best so far" is the projection of the latest logits: minibatch losses come from different seeds and are not
comparable across iterations, so the lowest of them would pick the easiest batch rather than the best mask.
Cancelling keeps it.

The sampling task is given as callables and tensors, so this module does not know the pipeline: ``denoise(x, t,
cond)`` returns the guided noise prediction with exactly one call of the denoiser (the pipeline's CFG batching
inside), and the scheduler's ``step`` must be differentiable (DDIM's is).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .apply import apply, exclusive
from .blocks import capture_denoiser_call, find_blocks
from .policy import GRANULARITIES, ORDERS, REUSE_MODES, Mixing, Policy, model_ref
from .reuse import ReuseState, attach_reuse_hooks, detach_all
from .speedup import measure_savings, predicted_speedup

GATE_MODES = ("step", "block")
PSNR_CAP_DB = 100.0  # as workbench.metrics: identical images count as 100 dB


@dataclass
class AutoFRConfig:
    """Settings of one Auto-FR run (all stored in the policy's provenance).

    gates: ``"step"`` = one gate per step shared by all blocks (the paper); ``"block"`` = one per block × step
        (more freedom, 18× more gates on tiny-unet, so noisier gradients per gate).
    granularity: what a reusing block skips: ``"feature"`` (the paper's timestep-independent part) or ``"block"`` (the
        whole block, DeepCache / Learning-to-Cache style: saves more FLOPs per gate, costs more quality).
    target_compute: compute fraction (1 = full cost) to steer to with the Lagrange multiplier; ``None`` uses the
        paper's fixed penalty ``penalty``·Σ ReLU(2σ(g) − 1) instead.
    penalty: the paper's weight w (used only when ``target_compute`` is None; the paper reports ≈ 1e-3).
    iterations: Adam steps. Each costs one forward and backward pass through all steps for ``batch_size`` images.
    lr: Adam learning rate on the logits. With ``init_logit`` 0.1 a gate can flip after ~2 steps at 5e-2.
    batch_size: images per iteration (the training set is cycled in a seeded random order).
    init: ``"uniform"`` starts from evenly spaced keyframes at the target's cost (a feasible start, so every run
        has a mask meeting the target); ``"full"`` starts from every step computed.
    init_logit: |logit| of the starting gates; smaller flips sooner and is noisier.
    dual_rate: κ of the multiplicative μ update; larger reacts faster to the compute overshoot, oscillates more.
    tolerance: a mask meets the target when C ≤ target + tolerance.
    estimator: the forward mask of the straight-through estimator. ``"round"``: round(σ(g)), the paper's; the
        multiplier steers its cost to the target. ``"budget"``: the budget projection of the logits (see above), so
        training runs the mask it would export; the backward pass is σ' in both. Needs a target.
    checkpoint: gradient checkpointing per step (memory of one step instead of all; ~1.3× the time).
    seed: order of the training images.
    """

    gates: str = "step"
    granularity: str = "feature"
    reuse: str = "hold"  # what a reusing block uses: its last keyframe value, or a forecast (taylor1 / taylor2)
    target_compute: float | None = 0.6
    penalty: float = 1e-3
    iterations: int = 30
    lr: float = 5e-2
    batch_size: int = 2
    init: str = "uniform"
    init_logit: float = 0.1
    dual_rate: float = 2.0
    tolerance: float = 1e-6
    estimator: str = "round"
    checkpoint: bool = False
    seed: int = 0

    def problems(self) -> list[str]:
        out = []
        if self.gates not in GATE_MODES:
            out.append(f"gates must be one of {', '.join(GATE_MODES)}, got {self.gates!r}")
        if self.granularity not in GRANULARITIES:
            out.append(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.reuse not in REUSE_MODES:
            out.append(f"reuse must be one of {', '.join(REUSE_MODES)}, got {self.reuse!r}")
        if self.target_compute is not None and not 0.0 < self.target_compute <= 1.0:
            out.append(f"target_compute must lie in (0, 1], got {self.target_compute}")
        if self.iterations < 0:
            out.append(f"iterations must be ≥ 0, got {self.iterations}")
        if self.batch_size < 1:
            out.append(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.estimator not in ("round", "budget"):
            out.append(f"estimator must be 'round' or 'budget', got {self.estimator!r}")
        elif self.estimator == "budget" and self.target_compute is None:
            out.append("the budget estimator needs a target compute fraction")
        if self.init not in ("uniform", "full"):
            out.append(f"init must be 'uniform' or 'full', got {self.init!r}")
        if not self.lr > 0:
            out.append(f"lr must be > 0, got {self.lr}")
        return out


@dataclass
class Samples:
    """Starting noise and conditioning of a set of images, one row each (``cond`` indexable along dim 0 or None)."""

    noise: torch.Tensor
    cond: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.noise.shape[0])

    def take(self, idx: list[int] | slice) -> Samples:
        return Samples(self.noise[idx], None if self.cond is None else self.cond[idx])


@dataclass
class DataParallel:
    """Training one set of gates on several processes (``torch.distributed``), each taking its share of every
    minibatch.

    Every rank holds the whole training set and draws the same seeded order, so iteration i's minibatch is the one a
    single process would draw; rank r samples its contiguous share of it. The quality term is the log MSE of the
    *whole* minibatch: each rank sums its squared errors, the sums are all-reduced, and each rank back-propagates
    its sum divided by the total (d log MSE = d Σ / Σ); the gate gradients are then all-reduced (summed). MSE,
    compute fraction and the multiplier μ are therefore the same on every rank and every rank takes the same Adam
    step: the result equals single-process training on the union of the seeds up to floating-point rounding.

    rank, world_size: this process's place in the job. all_reduce: the sum of a tensor over all ranks (a new
    tensor on the same device; e.g. ``torch.distributed.all_reduce`` on a copy); called the same number of times,
    in the same order, on every rank.
    """

    rank: int
    world_size: int
    all_reduce: Callable[[torch.Tensor], torch.Tensor]

    def share(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (the first ``len mod world_size`` ranks take one more)."""
        base, extra = divmod(len(items), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return items[start:start + base + (1 if self.rank < extra else 0)]


@dataclass
class AutoFRResult:
    """What :func:`learn_policy` returns: the policy (provenance filled) and the run's record."""

    policy: Policy
    history: list[dict] = field(default_factory=list)
    validation: dict = field(default_factory=dict)
    cancelled: bool = False
    seconds: float = 0.0


# ---- gates -----------------------------------------------------------------------------------------------------------
def straight_through_gate(logits: torch.Tensor) -> torch.Tensor:
    """round(σ(logits)) in the forward pass, the gradient of σ(logits) in the backward pass (FRDiff's Auto-FR).

    Written as hard + (soft − soft.detach()) so the forward value is exactly 0 or 1 (the bracket is exactly 0).
    A logit of exactly 0 (σ = 0.5) counts as computed.
    """
    soft = torch.sigmoid(logits)
    hard = (logits >= 0).to(soft.dtype)
    return hard + (soft - soft.detach())


def gate_matrix(logits: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """Gates ``[blocks, steps]`` from learnable logits (``[steps − 1]`` per step or ``[blocks, steps − 1]`` per
    block), with step 0 fixed to 1 (always computed)."""
    gates = straight_through_gate(logits)
    if gates.ndim == 1:
        gates = gates.unsqueeze(0).expand(n_blocks, -1)
    ones = torch.ones(n_blocks, 1, dtype=gates.dtype, device=gates.device)
    return torch.cat([ones, gates], 1)


def compute_fraction(gates: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """Σ step costs / steps for gates ``[blocks, steps]`` (1 = computed) and per-block reuse FLOP shares: the
    engine's cost model (:func:`frdiff.speedup.step_costs`, mixing off) made differentiable."""
    steps = gates.shape[1]
    return 1.0 - ((1.0 - gates) * shares.to(gates.dtype)[:, None]).sum() / steps


def uniform_start(steps: int, total_share: float, target: float | None) -> torch.Tensor:
    """bool ``[steps]``: the fewest evenly spaced keyframes (step 0 included) whose cost meets ``target`` with all
    blocks reusing between them (every step computed when ``target`` is None or unreachable cheaper)."""
    if target is None or total_share <= 0:
        return torch.ones(steps, dtype=torch.bool)
    # cost = 1 − (steps − k)/steps · total_share ≤ target  ⇔  k ≤ steps·(1 − (1 − target)/total_share)
    k = max(1, math.floor(steps * (1.0 - (1.0 - target) / total_share) + 1e-9))
    mask = torch.zeros(steps, dtype=torch.bool)
    mask[torch.floor(torch.arange(k) * steps / k).long()] = True
    return mask


def project_to_budget(logits: torch.Tensor, shares: torch.Tensor, target: float,
                      tolerance: float = 1e-6) -> torch.Tensor:
    """bool ``[blocks, steps]``: step 0, then gates in decreasing logit order while the compute fraction stays
    ≤ ``target`` (a gate that does not fit is skipped; cheaper ones after it may still fit).

    logits: ``[steps − 1]`` (per step: a gate costs Σ shares / steps) or ``[blocks, steps − 1]`` (per block: gate
    (b, s) costs share_b / steps).
    """
    shares = shares.double().cpu()
    nb = len(shares)
    steps = logits.shape[-1] + 1
    per_step = logits.ndim == 1
    flat = logits.detach().double().cpu().flatten()
    costs = (shares.sum().repeat(steps - 1) if per_step else shares[:, None].expand(nb, steps - 1).flatten()) / steps
    mask = torch.zeros(1 if per_step else nb, steps, dtype=torch.bool)
    mask[:, 0] = True
    compute = 1.0 - float(shares.sum()) * (steps - 1) / steps  # every gate after step 0 reusing
    for i in torch.argsort(flat, descending=True, stable=True).tolist():
        if compute + float(costs[i]) <= target + tolerance:
            compute += float(costs[i])
            mask.view(-1, steps)[i // (steps - 1), 1 + i % (steps - 1)] = True
    return mask.expand(nb, steps).clone()


# ---- hooks and sampling ----------------------------------------------------------------------------------------------
@contextmanager
def gated_reuse(denoiser: nn.Module, blocks: list[str], granularity: list[str], order: int = 0):
    """Attach the engine's reuse hooks to ``blocks`` for a gate-driven run; yields the shared :class:`ReuseState`.

    Set ``state.gates`` (``[blocks, steps]``), with forecasts (``order`` > 0) ``state.hard`` (the same gates as
    host booleans), and ``state.step`` before each denoiser call; the hooks blend g·computed + (1 − g)·reused.
    Holds the denoiser's lock (:func:`frdiff.exclusive`); hooks are always removed.
    """
    state = ReuseState(torch.ones(len(blocks), 1, dtype=torch.bool), orders=[order] * len(blocks))
    attached: list[tuple[nn.Module, str]] = []
    with exclusive(denoiser):
        try:
            attach_reuse_hooks(denoiser, blocks, granularity, state, "autofr", attached)
            yield state
        finally:
            detach_all(attached)
            state.clear()
            state.gates = None


def sample(denoise: Callable, scheduler, noise: torch.Tensor, cond, steps: int, state: ReuseState | None = None,
           use_checkpoint: bool = False) -> torch.Tensor:
    """Plain sampling loop, differentiable (no ``no_grad``): the pipeline's loop without CFG details.

    ``state``: the gated hooks' state; its ``step`` is set before each call. ``use_checkpoint``: recompute each
    step in the backward pass (needs ``state`` so the step's starting caches can be restored).
    """
    # the scheduler's timesteps on the CPU, the denoiser's from one upload (DDIM's step indexes a CPU table with the
    # timestep: a GPU timestep would make every step wait for the GPU, as in the project's pipeline)
    scheduler.set_timesteps(steps)
    model_timesteps = scheduler.timesteps.to(noise.device)
    x = noise * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):

        def one_step(x, i=i, t=t, caches=None):
            if state is not None:
                state.step = i
                if caches is not None:  # checkpoint recompute: start from the caches this step started with
                    for hook, cache in zip(state.hooks, caches, strict=True):
                        hook.cache = cache
            eps = denoise(scheduler.scale_model_input(x, t), model_timesteps[i], cond)
            return scheduler.step(eps, t, x, return_dict=False)[0]

        if use_checkpoint and state is not None and torch.is_grad_enabled():
            caches = [hook.cache for hook in state.hooks]
            x = checkpoint(one_step, x, use_reentrant=False, caches=caches)
        else:
            x = one_step(x)
    return x


def psnr_per_image(reference: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of images in [-1, 1] (clamped, as the pipeline outputs them) on the [0, 1] scale, capped at 100:
    the same numbers as ``workbench.metrics.compare_images``."""
    ref = (reference.detach().double().clamp(-1, 1) + 1) / 2
    img = (images.detach().double().clamp(-1, 1) + 1) / 2
    mse = ((ref - img) ** 2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-300))
    return torch.where(mse == 0, torch.full_like(psnr, PSNR_CAP_DB), psnr.clamp(max=PSNR_CAP_DB))


def _savings(denoiser: nn.Module, denoise: Callable, scheduler, samples: Samples, steps: int) -> dict:
    """FLOP shares a reuse step skips, measured on this task's first denoiser call."""

    def first_call():
        with torch.no_grad():
            sample(denoise, scheduler, samples.take(slice(0, 1)).noise, _first(samples.cond), steps)

    args, kwargs = capture_denoiser_call(denoiser, first_call)
    return measure_savings(denoiser, None, *args, **kwargs)


def _first(cond):
    return None if cond is None else cond[:1]


@torch.no_grad()
def reference_samples(denoiser: nn.Module, denoise: Callable, scheduler, samples: Samples, steps: int,
                      batch_size: int = 16) -> torch.Tensor:
    """Full-compute final samples (no hooks), in batches of ``batch_size``."""
    out = []
    with exclusive(denoiser):
        for start in range(0, len(samples), batch_size):
            part = samples.take(slice(start, start + batch_size))
            out.append(sample(denoise, scheduler, part.noise, part.cond, steps))
    return torch.cat(out)


@torch.no_grad()
def evaluate_policy(denoiser: nn.Module, policy: Policy, denoise: Callable, scheduler, samples: Samples,
                    reference: torch.Tensor | None = None, batch_size: int = 16) -> dict:
    """Run ``policy`` through the engine (:func:`frdiff.apply`) on ``samples``; PSNR and MSE against the
    full-compute run from the same noise (``reference``, computed when not given)."""
    steps = policy.steps
    if reference is None:
        reference = reference_samples(denoiser, denoise, scheduler, samples, steps, batch_size)
    out = []
    with apply(denoiser, policy, check_model=False) as run:
        for start in range(0, len(samples), batch_size):
            part = samples.take(slice(start, start + batch_size))
            out.append(sample(denoise, scheduler, part.noise, part.cond, steps))
    images = torch.cat(out)
    psnr = psnr_per_image(reference, images)
    return {"psnr": float(psnr.mean()), "psnr_min": float(psnr.min()), "n": len(samples),
            "mse": float(((images.double() - reference.double()) ** 2).mean()),
            "denoiser_calls": run.report().denoiser_calls}


# ---- the optimisation ------------------------------------------------------------------------------------------------
def _data_parallel_backward(dp: DataParallel, logits: torch.Tensor, idx: list[int], train: Samples,
                            references: dict[int, torch.Tensor], denoise: Callable, scheduler, steps: int,
                            state: ReuseState, config: AutoFRConfig, target: float | None) -> tuple[float, float]:
    """This rank's share of one iteration's backward pass; leaves the all-reduced gradient of the whole minibatch's
    quality term (log MSE with a target, MSE without) in ``logits.grad``. Returns (MSE, log MSE) of the whole
    minibatch."""
    sq = None
    if idx:
        part = train.take(idx)
        ref = torch.stack([references[i] for i in idx])
        x = sample(denoise, scheduler, part.noise, part.cond, steps, state, config.checkpoint)
        sq = ((x.float() - ref.float()) ** 2).sum()
        local = torch.tensor([float(sq.detach()), float(x.numel())], dtype=torch.float64)
    else:  # fewer images than ranks: this rank only takes part in the reductions
        local = torch.zeros(2, dtype=torch.float64)
    total_sq, count = (float(v) for v in dp.all_reduce(local))
    mse = total_sq / count
    if sq is not None:
        if target is not None:  # d log(mse) = d Σsq / Σsq; the clamp at 1e-12 has zero gradient below it
            (sq * (1.0 / total_sq if mse > 1e-12 else 0.0)).backward()
        else:
            (sq / count).backward()
    grad = logits.grad if logits.grad is not None else torch.zeros_like(logits)
    logits.grad = dp.all_reduce(grad).to(logits.dtype)
    return mse, math.log(max(mse, 1e-12))



def learn_policy(denoiser: nn.Module, denoise: Callable, scheduler, train: Samples, steps: int,
                 config: AutoFRConfig | None = None, val: Samples | None = None, savings: dict | None = None,
                 scheduler_name: str = "ddim", progress: Callable[[dict], None] | None = None,
                 cancel: Callable[[], bool] | None = None, extra_provenance: dict | None = None,
                 data_parallel: DataParallel | None = None) -> AutoFRResult:
    """Learn a keyframe policy for ``denoiser`` (Auto-FR, see the module docstring).

    denoise: ``(x, t, cond) → ε`` with one call of ``denoiser`` (guidance included); scheduler: a diffusers
    scheduler with a differentiable ``step`` (a copy is used); train / val: noise and conditioning of the training
    and held-out images; savings: :func:`frdiff.measure_savings` output (measured here when None).
    progress: called after every iteration with ``{"iteration", "iterations", "loss", "mse", "compute_fraction",
    "target", "mu", "keyframes", "mask" (bool [blocks, steps], the rounded mask this iteration ran), "seconds",
    "skipped_nonfinite" (the run overflowed to a non-finite loss or gradient: the gates were left as they were)}``
    and, with a target, ``"projected_mask"`` / ``"projected_compute_fraction"``: what stopping now would export.
    cancel: polled before every iteration; when it returns True the run stops and exports what it learned so far.
    data_parallel: train on several processes, each its share of every minibatch (:class:`DataParallel`); ``train``
    is then the whole training set on every rank and ``config.batch_size`` the minibatch of all ranks together.
    """
    config = config or AutoFRConfig()
    dp = data_parallel if data_parallel is not None and data_parallel.world_size > 1 else None
    problems = config.problems()
    if steps < 2:
        problems.append(f"Auto-FR needs at least 2 steps, got {steps}")
    if len(train) == 0:
        problems.append("the training set is empty")
    if problems:
        raise ValueError("; ".join(problems))
    t_start = time.perf_counter()
    scheduler = type(scheduler).from_config(scheduler.config)  # set_timesteps mutates it; leave the caller's alone
    blocks_kinds = find_blocks(denoiser)
    blocks = [b for b, _ in blocks_kinds]
    kinds = [k for _, k in blocks_kinds]
    granularity = ["block" if k == "generic" else config.granularity for k in kinds]
    forecast_order = ORDERS[config.reuse]
    nb = len(blocks)
    if nb == 0:
        raise ValueError(f"{type(denoiser).__name__} has no blocks FRDiff can reuse")
    if savings is None:
        savings = _savings(denoiser, denoise, scheduler, train, steps)
    shares = torch.tensor([savings[g].get(b, 0.0) for b, g in zip(blocks, granularity, strict=True)],
                          dtype=torch.float32)
    total_share = float(shares.sum())
    target = config.target_compute
    min_compute = 1.0 - total_share * (steps - 1) / steps
    notes = []
    if target is not None and target < min_compute - config.tolerance:
        notes.append(f"target compute {target:.3f} is below what {config.granularity} reuse can reach on this model "
                     f"({min_compute:.3f}: reusing every block at every step after step 0); steering to it anyway "
                     f"ends with (nearly) every gate at reuse")

    # starting logits
    start = uniform_start(steps, total_share, target) if config.init == "uniform" else torch.ones(steps, dtype=bool)
    sign = start[1:].float() * 2 - 1
    init = sign * config.init_logit
    logits = (init if config.gates == "step" else init.unsqueeze(0).repeat(nb, 1)).clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=config.lr)

    frozen = [(p, p.requires_grad) for p in denoiser.parameters()]
    was_training = denoiser.training
    gen = torch.Generator().manual_seed(config.seed)
    order: list[int] = []
    references: dict[int, torch.Tensor] = {}
    history: list[dict] = []
    mu: float | None = None
    cancelled = False
    try:
        denoiser.requires_grad_(False)
        denoiser.train(False)
        for it in range(config.iterations):
            stop = cancel is not None and cancel()
            if dp is not None:  # every rank stops at the same iteration
                stop = bool(dp.all_reduce(torch.tensor([float(stop)])).item() > 0)
            if stop:
                cancelled = True
                break
            while len(order) < config.batch_size:
                order += torch.randperm(len(train), generator=gen).tolist()
            idx, order = order[: config.batch_size], order[config.batch_size:]
            if dp is not None:
                idx = dp.share(idx)
            missing = [i for i in idx if i not in references]
            if missing:
                ref = reference_samples(denoiser, denoise, scheduler, train.take(missing), steps, config.batch_size)
                references.update({i: r for i, r in zip(missing, ref, strict=True)})

            opt.zero_grad(set_to_none=True)
            # the backward pass runs inside: checkpointed steps rerun the hooks
            with gated_reuse(denoiser, blocks, granularity, forecast_order) as state:
                gates = gate_matrix(logits, nb)
                if config.estimator == "budget":  # forward: the projected mask; backward: σ' as before
                    gates = project_to_budget(logits, shares, target, config.tolerance).float() + (
                        gates - gates.detach())
                state.gates = gates
                state.hard = (gates.detach() > 0.5).tolist()  # read once per iteration: forecasts keep their history
                if dp is None:
                    part = train.take(idx)
                    ref = torch.stack([references[i] for i in idx])
                    x = sample(denoise, scheduler, part.noise, part.cond, steps, state, config.checkpoint)
                    mse = torch.mean((x.float() - ref.float()) ** 2)
                    mse_value = float(mse.detach())
                    if target is not None:
                        quality = torch.log(mse.clamp_min(1e-12))
                        quality.backward()
                        quality_value = float(quality.detach())
                    else:
                        pen = torch.relu(2 * torch.sigmoid(logits) - 1).sum()
                        (mse + config.penalty * pen).backward()
                else:
                    mse_value, quality_value = _data_parallel_backward(dp, logits, idx, train, references, denoise,
                                                                       scheduler, steps, state, config, target)
                    if target is None:
                        pen = torch.relu(2 * torch.sigmoid(logits) - 1).sum()
                        logits.grad += config.penalty * torch.autograd.grad(pen, logits)[0]
            hard = gates.detach() > 0.5
            comp_hard = float(compute_fraction(hard.float(), shares))
            if target is not None:
                g_quality = logits.grad.detach().clone()
                g_pen = torch.autograd.grad(compute_fraction(gate_matrix(logits, nb), shares), logits)[0]
                if mu is None:  # penalty gradient matched to the quality gradient at the start
                    mu = float(g_quality.abs().median() / g_pen.abs().median().clamp_min(1e-12))
                else:
                    mu *= math.exp(config.dual_rate * (comp_hard - target) / target)
                logits.grad = g_quality + mu * g_pen
                loss_value = quality_value + mu * (comp_hard - target)
            else:
                loss_value = mse_value + config.penalty * float(pen.detach())
            finite = math.isfinite(mse_value) and bool(torch.isfinite(logits.grad).all())
            if finite:
                opt.step()
            elif mu is not None and not math.isfinite(mu):  # a NaN gradient met the dual's first estimate
                mu = None
            # else: a forward that overflowed (a forecast run away over a long reuse stretch) does not move the gates
            record = {"iteration": it, "loss": loss_value, "mse": mse_value, "compute_fraction": comp_hard,
                      "mu": mu, "keyframes": int(hard.sum()), "seconds": time.perf_counter() - t_start,
                      "skipped_nonfinite": not finite}
            history.append(record)
            if progress is not None:
                info = {**record, "iterations": config.iterations, "target": target, "mask": hard}
                if target is not None:  # what a stop now would export
                    info["projected_mask"] = project_to_budget(logits, shares, target, config.tolerance)
                    info["projected_compute_fraction"] = float(compute_fraction(info["projected_mask"].float(),
                                                                                shares))
                progress(info)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        denoiser.train(was_training)

    with torch.no_grad():  # the exported mask: the budget projection of the latest logits (or the rounded mask)
        if target is not None:
            mask = project_to_budget(logits, shares, target, config.tolerance)
        else:
            mask = gate_matrix(logits.detach(), nb) > 0.5
    exported_compute = float(compute_fraction(mask.float(), shares))
    policy = Policy(blocks=blocks, keyframes=mask, steps=steps, scheduler=scheduler_name,
                    granularity=granularity, kinds=kinds, mixing=Mixing(), model=model_ref(denoiser),
                    reuse=[config.reuse] * nb)
    policy.check(model_blocks=dict(blocks_kinds))
    validation: dict = {}
    if val is not None and len(val):
        validation = evaluate_policy(denoiser, policy, denoise, scheduler, val)
    seconds = time.perf_counter() - t_start
    policy.provenance = {
        "made_by": "autofr",
        "settings": {**asdict(config), "steps": steps, "scheduler": scheduler_name, "train_images": len(train),
                     "val_images": 0 if val is None else len(val)},
        "iterations_run": len(history),
        "compute_fraction": exported_compute,
        "predicted_speedup": predicted_speedup(policy, savings),
        "min_compute_fraction": min_compute,
        "loss_curve": [{k: r[k] for k in ("iteration", "loss", "mse", "compute_fraction", "mu")} for r in history],
        "validation": validation,
        "cancelled": cancelled,
        "seconds": seconds,
        "notes": notes,
        **(extra_provenance or {}),
    }
    return AutoFRResult(policy=policy, history=history, validation=validation, cancelled=cancelled, seconds=seconds)
