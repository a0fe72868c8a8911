"""Keyframe policies: what FRDiff recomputes at each step, as data (one versioned JSON format).

A policy holds, for one denoiser, scheduler and step count:

- ``keyframes``: a boolean mask ``[blocks × steps]``. ``True`` = the block is computed at that step (a keyframe for
  it, its cache refreshed); ``False`` = the block reuses what it cached at its last keyframe (the FRDiff paper, "Feature
  reuse"). Step 0 is always a keyframe for every block. Blocks the policy does not list are always computed.
- ``granularity`` per block: ``"feature"`` reuses the paper's timestep-independent part (resnet ``conv1`` branch,
  attention residual branch, DiT self-attention before gating); ``"block"`` reuses the whole output and skips the
  block (what DeepCache-style policies need).
- ``reuse`` per block: what a reusing block uses for its cached part. ``"hold"`` (FRDiff, the paper) is the value
  of its last keyframe; ``"taylor1"`` / ``"taylor2"`` *forecast* it from its last 2 / 3 keyframe values with the
  polynomial through them (linear / quadratic extrapolation in the forecast axis, TaylorSeer's idea, arXiv
  2503.06923). A forecast needs as many keyframes behind it: until it has them it uses the highest order it can,
  ``hold`` with one.
- ``mixing``: score mixing (the FRDiff paper). At a step where any listed block reuses (an *FR step*) the
  denoiser output is ε̂ = λ(r)·ε_FR + (1 − λ(r))·ε_key, r = step / steps. Where λ = 0 the denoiser is not called.
- ``skip_reuse``: ε_key at such steps — ``hold`` (the last full step's output, as in the paper) or forecast from the
  last full steps' outputs (``taylor1``/``taylor2``), so multistep solvers see a changing ε.
- ``skip_space``: what ε_key is held or forecast *as*: ``"output"`` (the denoiser's output itself) or ``"data"``
  (the data prediction x̂₀ the output implies at its step, e.g. x̂₀ = (x_t − σ_t·ε)/α_t; ε_key is the output that
  gives the held or forecast x̂₀ at the current step's x_t). A multistep solver (DPM-Solver++, UniPC) builds its
  update from x̂₀; forecasting x̂₀ keeps its difference terms consistent with the step's own x_t. Needs a scheduler
  whose noise levels the engine can read (``alphas_cumprod``, VE ``sigmas`` or flow-matching ``sigmas``).
  Written to the file only when ``"data"``, so every other policy's bytes are those of earlier builds.
- ``forecast_axis``: what forecasts extrapolate in: ``"step"`` (the step index) or ``"timestep"`` (the scheduler's
  timestep values; the same weights wherever the timesteps are evenly spaced, e.g. 10, 20 or 50 trailing-spaced
  steps of 1000).
- ``cache_dtype``: the dtype caches are kept in (``None``: the model's), e.g. ``float16`` for an fp32 model.
- ``model``: the architecture and a fingerprint of the denoiser's config, so a policy is not run on another model.
- ``provenance``: how the policy was made, its parameters and the metrics measured when it was made.

A step is *full* when every listed block is a keyframe there; ε_key is the output of the most recent full step.

JSON (``"format": "frdiff-policy", "version": 2``; version-1 files, which have no reuse fields, load as ``hold``
everywhere) stores the mask as one string of ``1``/``0`` per block, so a policy file is readable and diffable.
Loading validates everything and reports every problem at once, one per line (:class:`PolicyError`); nothing is
evaluated or unpickled. The format is documented in ``docs/policy-format.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "frdiff-policy"
VERSION = 2
READS = (1, 2)  # versions this build loads
GRANULARITIES = ("feature", "block")
REUSE_MODES = ("hold", "taylor1", "taylor2")
ORDERS = {"hold": 0, "taylor1": 1, "taylor2": 2}  # polynomial order of each reuse mode's forecast
FORECAST_AXES = ("step", "timestep")
SKIP_SPACES = ("output", "data")
CACHE_DTYPES = ("float32", "float16", "bfloat16")
# Which granularities each block kind supports (kinds come from frdiff.blocks.find_blocks).
KIND_GRANULARITIES = {
    "resnet": ("feature", "block"),
    "attention": ("feature", "block"),
    "dit_block": ("feature", "block"),
    "transformer_block": ("feature", "block"),
    "generic": ("block",),
}
MIX_SCHEDULES = ("linear", "sigmoid", "constant")
SIGMOID_EPS = 1e-3  # a sigmoid λ below this counts as 0 (no denoiser call), above 1 − this as 1
LAMBDA_EPS = 1e-9  # a linear λ this close to 0 or 1 is rounding error of the ramp: snapped there
# What a loaded file may hold (bigger or deeper is refused with one line, never a crash).
MAX_FILE_BYTES = 16 * 2**20
MAX_DEPTH = 32  # JSON nesting (provenance may nest; a policy file nested deeper is not one we wrote)
MAX_STEPS = 10_000
MAX_SLOPE = 1e4
MAX_NAME = 512
TOP_KEYS = {"format", "version", "model", "scheduler", "steps", "blocks", "mixing", "provenance"}
TOP_KEYS_V2 = TOP_KEYS | {"skip_reuse", "skip_space", "forecast_axis", "cache_dtype"}
BLOCK_KEYS = {"name", "kind", "granularity", "keyframes"}
BLOCK_KEYS_V2 = BLOCK_KEYS | {"reuse"}
MIX_KEYS = {"enabled", "schedule", "center", "slope", "value"}


class PolicyError(ValueError):
    """A policy that cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Mixing:
    """Score-mixing schedule λ(r), r = step / steps (the FRDiff paper, "Score mixing").

    enabled: off means λ = 1 at every FR step (plain feature reuse).
    schedule: ``linear`` = the paper's clipped ramp clip((slope·(r − center) + 2) / 4, 0, 1); ``sigmoid`` =
        σ(slope·(r − center)) with values within 1e-3 of 0 or 1 snapped there; ``constant`` = ``value`` everywhere
        (``value`` 0 reuses the last keyframe's output outright: the reduced-NFE baseline).
    center, slope: where the ramp is centred (0..1) and how steep it is (> 0). Paper defaults 0.5 and 30: λ = 0 up
        to r ≈ 0.433 (no denoiser call), 1 from r ≈ 0.567.
    value: λ of the constant schedule, 0..1.
    """

    enabled: bool = False
    schedule: str = "linear"
    center: float = 0.5
    slope: float = 30.0
    value: float = 0.0

    def lam(self, r: float) -> float:
        """λ at relative position ``r`` of sampling (0 = noisiest)."""
        if not self.enabled:
            return 1.0
        if self.schedule == "constant":
            return float(self.value)
        if self.schedule == "sigmoid":
            x = self.slope * (r - self.center)
            v = 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))  # never overflows
            return 0.0 if v < SIGMOID_EPS else 1.0 if v > 1 - SIGMOID_EPS else v
        v = (self.slope * (r - self.center) + 2.0) / 4.0
        # e.g. 30 steps, step 13: 30·(13/30 − 0.5) + 2 is 1.1e-16 in floats, 0 in exact arithmetic
        return 0.0 if v < LAMBDA_EPS else 1.0 if v > 1 - LAMBDA_EPS else v

    def curve(self, steps: int) -> list[float]:
        """λ at every step index 0..steps−1."""
        return [self.lam(s / steps) for s in range(steps)]

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.enabled, bool):
            out.append(f"mixing.enabled must be True or False, got {_short(self.enabled)}")
        bad = [k for k in ("center", "slope", "value") if not _finite(getattr(self, k))]
        out += [f"mixing.{k} must be a finite number, got {_short(getattr(self, k))}" for k in bad]
        if not isinstance(self.schedule, str):
            out.append(f"mixing.schedule must be a string, got {_short(self.schedule)}")
        if bad or not isinstance(self.schedule, str):  # the range checks below need numbers (and a hashable name)
            return out
        if self.schedule not in MIX_SCHEDULES:
            out.append(f"mixing.schedule is {self.schedule!r}; use one of {', '.join(MIX_SCHEDULES)}")
        if not 0.0 <= self.center <= 1.0:
            out.append(f"mixing.center must lie in [0, 1], got {self.center}")
        if not 0 < self.slope <= MAX_SLOPE:
            out.append(f"mixing.slope must lie in (0, {MAX_SLOPE:g}], got {self.slope}")
        if not 0.0 <= self.value <= 1.0:
            out.append(f"mixing.value must lie in [0, 1], got {self.value}")
        return out


@dataclass
class Policy:
    """Per-block × per-step keyframes, reuse granularity and score mixing for one model and schedule."""

    blocks: list[str]
    keyframes: torch.Tensor  # bool [len(blocks), steps]
    steps: int
    scheduler: str = "ddim"
    granularity: list[str] | None = None  # per block; None → "feature" (or "block" for generic blocks)
    kinds: list[str] | None = None  # per block kind at creation (informative; checked against the model)
    mixing: Mixing = field(default_factory=Mixing)
    model: dict = field(default_factory=dict)  # {"architecture": class name, "fingerprint": hex}
    provenance: dict = field(default_factory=dict)
    reuse: list[str] | None = None  # per block: hold | taylor1 | taylor2; None → hold everywhere
    skip_reuse: str = "hold"  # ε at skipped steps (λ = 0) and ε_key in mixing: hold or forecast
    skip_space: str = "output"  # ε_key held/forecast as the denoiser output or as the data prediction x̂₀
    forecast_axis: str = "step"  # step | timestep
    cache_dtype: str | None = None  # dtype of the caches; None: the model's
    load_notes: list[str] = field(default_factory=list, repr=False, compare=False)  # what loading ignored

    def __post_init__(self):
        mask = torch.as_tensor(self.keyframes, dtype=torch.bool)
        if mask.ndim == 1 and isinstance(self.steps, int) and self.steps >= 0 \
                and mask.numel() == len(self.blocks) * self.steps:  # a flat mask, block after block
            mask = mask.reshape(len(self.blocks), self.steps)  # a 2-D one keeps its shape: problems() checks it
        self.blocks = list(self.blocks)  # the caller's list is not the policy's
        self.keyframes = mask.clone()
        if self.granularity is None:
            kinds = self.kinds or ["resnet"] * len(self.blocks)
            self.granularity = ["block" if k == "generic" else "feature" for k in kinds]
        if self.reuse is None:
            self.reuse = ["hold"] * len(self.blocks)

    @property
    def forecasts(self) -> bool:
        """Whether any block or the skipped steps forecast (else the policy is a version-1 ``hold`` policy)."""
        return self.skip_reuse != "hold" or any(m != "hold" for m in self.reuse or [])

    # ---- derived per-step views -------------------------------------------------------------------------------
    def full_steps(self) -> torch.Tensor:
        """bool [steps]: every listed block computed (ε_key is refreshed there)."""
        if not self.blocks:
            return torch.ones(self.steps, dtype=torch.bool)
        return self.keyframes.all(0)

    def step_lambdas(self) -> list[float]:
        """λ at each step: 1 at full steps, the mixing schedule elsewhere."""
        full = self.full_steps().tolist()
        return [1.0 if full[s] else self.mixing.lam(s / self.steps) for s in range(self.steps)]

    def step_kinds(self) -> list[str]:
        """Per step: ``full`` (all computed), ``fr`` (some blocks reuse), ``skip`` (λ = 0: no denoiser call)."""
        full = self.full_steps().tolist()
        lams = self.step_lambdas()
        return ["full" if full[s] else "skip" if lams[s] == 0.0 else "fr" for s in range(self.steps)]

    def reuse_summary(self) -> str:
        """The reuse modes in a few words, e.g. ``taylor2 (18 blocks); ε_key: taylor2`` (blocks that never reuse
        at a called step are not counted; ε_key only where some step reads it)."""
        counts: dict[str, int] = {}
        for mode, reusing in zip(self.reuse, self.reusing_blocks(), strict=True):
            if reusing:
                counts[mode] = counts.get(mode, 0) + 1
        text = ", ".join(f"{m} ({n} block{'s' if n > 1 else ''})" for m, n in sorted(counts.items(),
                                                                                     key=lambda kv: -kv[1]))
        space = " of x̂₀" if self.skip_space == "data" else ""
        return (text or "no block reuses") + (f"; ε_key: {self.skip_reuse}{space}" if self.uses_eps_key() else "")

    def reusing_blocks(self) -> list[bool]:
        """Per block: whether it ever reuses at a step where the denoiser is called (an FR step). Others need no
        cache: a block computed at every step, or one whose reuse steps are all skipped (reduced NFE)."""
        fr = torch.tensor([k == "fr" for k in self.step_kinds()], dtype=torch.bool)
        return ((~self.keyframes) & fr).any(1).tolist() if self.blocks else []

    def uses_eps_key(self) -> bool:
        """Whether some step reads ε_key: a skipped step, or an FR step whose output is mixed (λ < 1)."""
        kinds, lams = self.step_kinds(), self.step_lambdas()
        return any(k == "skip" or (k == "fr" and lam < 1.0) for k, lam in zip(kinds, lams, strict=True))

    def denoiser_calls(self) -> int:
        return sum(k != "skip" for k in self.step_kinds())

    # ---- validation -------------------------------------------------------------------------------------------
    def problems(self, model_blocks: dict[str, str] | None = None, fingerprint: str | None = None,
                 steps: int | None = None, train_timesteps: int | None = None) -> list[str]:
        """Every reason this policy cannot run, as readable lines (empty = valid).

        model_blocks: ``{name: kind}`` of the target denoiser (``dict(find_blocks(model))``); fingerprint: its
        :func:`model_fingerprint`; steps: the step count it will run with; train_timesteps: the scheduler's
        ``num_train_timesteps`` (a schedule cannot have more steps than that).
        """
        out: list[str] = []
        nb = len(self.blocks)
        if not isinstance(self.steps, numbers.Integral) or isinstance(self.steps, bool):
            return [f"steps must be a whole number, got {self.steps!r}"]
        if not 1 <= self.steps <= MAX_STEPS:
            out.append(f"steps must lie in 1..{MAX_STEPS}, got {self.steps}")
        if train_timesteps is not None and self.steps > train_timesteps:
            out.append(f"the policy has {self.steps} steps but the scheduler has {train_timesteps} training "
                       f"timesteps; a schedule has at most that many steps (remap it: `python -m workbench policy "
                       f"remap P.json --steps N`)")
        if tuple(self.keyframes.shape) != (nb, self.steps):
            out.append(f"keyframes has shape {tuple(self.keyframes.shape)}, expected ({nb} blocks, {self.steps} "
                       f"steps)")
        elif nb and self.steps >= 1 and not bool(self.keyframes[:, 0].all()):
            bad = [self.blocks[i] for i in (~self.keyframes[:, 0]).nonzero().flatten().tolist()]
            out.append(f"step 0 must be a keyframe for every block; it is not for {', '.join(bad[:5])}"
                       + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
        if len(set(self.blocks)) != nb:
            dup = sorted({b for b in self.blocks if self.blocks.count(b) > 1})
            out.append(f"blocks listed twice: {', '.join(dup)}")
        if self.granularity is None or len(self.granularity) != nb:
            out.append(f"granularity has {len(self.granularity or [])} entries, expected one per block ({nb})")
        else:
            for b, g in zip(self.blocks, self.granularity, strict=True):
                if g not in GRANULARITIES:
                    out.append(f"block {b}: granularity {g!r} is not one of {', '.join(GRANULARITIES)}")
        if self.reuse is None or len(self.reuse) != nb:
            out.append(f"reuse has {len(self.reuse or [])} entries, expected one per block ({nb})")
        else:
            for b, m in zip(self.blocks, self.reuse, strict=True):
                if m not in REUSE_MODES:
                    out.append(f"block {b}: reuse {_short(m)} is not one of {', '.join(REUSE_MODES)}")
        if self.skip_reuse not in REUSE_MODES:
            out.append(f"skip_reuse {_short(self.skip_reuse)} is not one of {', '.join(REUSE_MODES)}")
        if self.skip_space not in SKIP_SPACES:
            out.append(f"skip_space {_short(self.skip_space)} is not one of {', '.join(SKIP_SPACES)}")
        if self.forecast_axis not in FORECAST_AXES:
            out.append(f"forecast_axis {_short(self.forecast_axis)} is not one of {', '.join(FORECAST_AXES)}")
        if self.cache_dtype is not None and self.cache_dtype not in CACHE_DTYPES:
            out.append(f"cache_dtype {_short(self.cache_dtype)} is not one of {', '.join(CACHE_DTYPES)} (or null)")
        for name in ("model", "provenance"):
            if not isinstance(getattr(self, name), dict):
                out.append(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.scheduler, str):
            out.append(f"scheduler must be a string, got {_short(self.scheduler)}")
        if isinstance(self.mixing, Mixing):
            out += self.mixing.problems()
        else:
            out.append(f"mixing must be a frdiff.Mixing, got {type(self.mixing).__name__}")
        if steps is not None and steps != self.steps:
            out.append(f"the policy is for {self.steps} steps but the run has {steps}; remap it "
                       f"(`python -m workbench policy remap P.json --steps {steps}`)")
        if fingerprint is not None and isinstance(self.model, dict) \
                and self.model.get("fingerprint") not in (None, fingerprint):
            out.append(f"the policy was made for another model (fingerprint {self.model.get('fingerprint')}, "
                       f"{self.model.get('architecture', '?')}); this model's is {fingerprint}")
        if model_blocks is not None:
            unknown = [b for b in self.blocks if b not in model_blocks]
            if unknown:
                out.append(f"unknown block(s) for this model: {', '.join(unknown[:5])}"
                           + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
            for b, g in zip(self.blocks, self.granularity or [], strict=False):
                kind = model_blocks.get(b)
                if kind is not None and g in GRANULARITIES and g not in KIND_GRANULARITIES.get(kind, ("block",)):
                    out.append(f"block {b} ({kind}) supports granularity {', '.join(KIND_GRANULARITIES[kind])}, "
                               f"not {g!r}")
        return out

    def check(self, **kwargs) -> Policy:
        """Raise :class:`PolicyError` listing every problem; return ``self`` when valid."""
        problems = self.problems(**kwargs)
        if problems:
            raise PolicyError(problems)
        return self

    # ---- JSON -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": dict(self.model),
            "scheduler": self.scheduler,
            "steps": self.steps,
            "blocks": [
                {"name": b, "kind": (self.kinds or [None] * len(self.blocks))[i], "granularity": self.granularity[i],
                 "reuse": self.reuse[i], "keyframes": "".join("1" if v else "0" for v in self.keyframes[i].tolist())}
                for i, b in enumerate(self.blocks)
            ],
            "mixing": {"enabled": self.mixing.enabled, "schedule": self.mixing.schedule,
                       "center": self.mixing.center, "slope": self.mixing.slope, "value": self.mixing.value},
            "skip_reuse": self.skip_reuse,
            **({"skip_space": self.skip_space} if self.skip_space != "output" else {}),
            "forecast_axis": self.forecast_axis,
            "cache_dtype": self.cache_dtype,
            "provenance": self.provenance,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the JSON file atomically (a temporary file in the same folder, then ``os.replace``): a reader sees
        the old file or the new one, and a failed write leaves no temporary file behind."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; give the policy a file name, e.g. {path / 'policy.json'}")
        self.check()  # a file that load() would refuse is not written
        path.parent.mkdir(parents=True, exist_ok=True)
        # a new name opened exclusively, as open() makes files (mkstemp's would be owner-only)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(self.to_json())
            if path.is_file():  # a replaced file keeps its mode
                os.chmod(tmp, path.stat().st_mode & 0o777)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_dict(cls, data) -> Policy:
        """Build and validate a policy from parsed JSON; :class:`PolicyError` lists every problem.

        Keys this version does not know are ignored and named in :attr:`load_notes`."""
        if not isinstance(data, dict):
            raise PolicyError([f"a policy must be a JSON object, got {_json_type(data)}"])
        problems = []
        if data.get("format") != FORMAT:
            problems.append(f"not an FRDiff policy: \"format\" is {_short(data.get('format'))}, expected {FORMAT!r}")
        elif data.get("version") not in READS or isinstance(data.get("version"), bool):
            problems.append(f"unsupported policy version {_short(data.get('version'))}; this build reads versions "
                            f"{', '.join(map(str, READS))}")
        if problems:
            raise PolicyError(problems)
        if _depth(data) > MAX_DEPTH:
            raise PolicyError([f"the file nests JSON more than {MAX_DEPTH} levels deep; a policy does not"])
        v2 = data["version"] == 2
        top_keys, block_keys = (TOP_KEYS_V2, BLOCK_KEYS_V2) if v2 else (TOP_KEYS, BLOCK_KEYS)
        notes = [f"ignored unknown key(s): {', '.join(sorted(map(str, set(data) - top_keys)))}"] \
            if set(data) - top_keys else []
        steps = data.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise PolicyError([f"\"steps\" must be an integer, got {_short(steps)}"])
        if not 1 <= steps <= MAX_STEPS:
            raise PolicyError([f"\"steps\" must lie in 1..{MAX_STEPS}, got {steps}"])
        raw_blocks = data.get("blocks")
        if not isinstance(raw_blocks, list):
            raise PolicyError(["\"blocks\" must be a list of {name, granularity, keyframes}"])
        if not raw_blocks:
            raise PolicyError(["\"blocks\" is empty: a policy lists at least one block (blocks it leaves out are "
                               "always computed; the preset \"none\" lists them all)"])
        names, kinds, grans, modes, rows = [], [], [], [], []
        for i, b in enumerate(raw_blocks):
            if not isinstance(b, dict) or not isinstance(b.get("name"), str) or not b["name"]:
                problems.append(f"blocks[{i}] must be an object with a non-empty \"name\"")
                continue
            name = b["name"]
            if len(name) > MAX_NAME:
                problems.append(f"blocks[{i}]: the name is {len(name)} characters long; block names are module "
                                f"paths of at most {MAX_NAME}")
                continue
            if set(b) - block_keys:
                notes.append(f"block {name}: ignored unknown key(s): {', '.join(sorted(set(b) - block_keys))}")
            mask = b.get("keyframes")
            if not isinstance(mask, str) or set(mask) - {"0", "1"}:
                problems.append(f"block {name}: keyframes must be a string of 0/1, one per step")
                continue
            if len(mask) != steps:
                problems.append(f"block {name}: keyframes has {len(mask)} steps, the policy {steps}")
                continue
            kind, gran = b.get("kind"), b.get("granularity", "feature")
            if kind is not None and (not isinstance(kind, str) or kind not in KIND_GRANULARITIES):
                problems.append(f"block {name}: kind {_short(kind)} is not one of {', '.join(KIND_GRANULARITIES)}")
                kind = None
            if not isinstance(gran, str):
                problems.append(f"block {name}: granularity must be a string, got {_short(gran)}")
                gran = "feature"
            mode = b.get("reuse", "hold") if v2 else "hold"
            if not isinstance(mode, str):
                problems.append(f"block {name}: reuse must be a string, got {_short(mode)}")
                mode = "hold"
            names.append(name)
            kinds.append(kind or "resnet")
            grans.append(gran)
            modes.append(mode)
            rows.append([c == "1" for c in mask])
        mixing = _mixing_from(data.get("mixing", {}), problems, notes)
        for key, kind in (("model", dict), ("provenance", dict), ("scheduler", str), ("skip_reuse", str),
                          ("skip_space", str), ("forecast_axis", str)):
            if key in data and not isinstance(data[key], kind):
                problems.append(f"\"{key}\" must be {'an object' if kind is dict else 'a string'}, got "
                                f"{_json_type(data[key])}")
        extra = {k: data[k] for k in ("skip_reuse", "skip_space", "forecast_axis")
                 if v2 and isinstance(data.get(k), str)}
        if v2 and data.get("cache_dtype") is not None:
            if isinstance(data["cache_dtype"], str):
                extra["cache_dtype"] = data["cache_dtype"]
            else:
                problems.append(f"\"cache_dtype\" must be a string or null, got {_json_type(data['cache_dtype'])}")
        policy = cls(blocks=names, keyframes=torch.tensor(rows, dtype=torch.bool).reshape(len(rows), steps),
                     steps=steps, scheduler=data["scheduler"] if isinstance(data.get("scheduler"), str) else "ddim",
                     granularity=grans, kinds=kinds, mixing=mixing, reuse=modes,
                     model=dict(data["model"]) if isinstance(data.get("model"), dict) else {},
                     provenance=dict(data["provenance"]) if isinstance(data.get("provenance"), dict) else {},
                     **extra)
        problems += [q for q in policy.problems() if q not in problems]  # mixing's ranges are already in
        if problems:
            raise PolicyError(problems)
        policy.load_notes = notes
        return policy

    @classmethod
    def from_json(cls, text: str) -> Policy:
        if isinstance(text, (bytes, bytearray)):
            return cls.from_bytes(bytes(text))
        if not isinstance(text, str):
            raise TypeError(f"Policy.from_json takes the file's text, got {type(text).__name__}")
        if _text_depth(text) > MAX_DEPTH:  # before parsing: how deep the parser recurses depends on the process
            raise PolicyError([f"the file nests JSON more than {MAX_DEPTH} levels deep; a policy does not"])
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as e:
            raise PolicyError([f"not valid JSON: {e}"]) from None
        except RecursionError:
            raise PolicyError([f"the file nests JSON more than {MAX_DEPTH} levels deep; a policy does not"]) from None
        except ValueError as e:  # NaN / Infinity, which JSON does not have
            raise PolicyError([str(e)]) from None
        return cls.from_dict(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Policy:
        """A policy file's bytes (an upload, a file read) → validated policy; every failure is a
        :class:`PolicyError` (size, encoding, JSON, content)."""
        if isinstance(data, str):
            return cls.from_json(data)
        if len(data) > MAX_FILE_BYTES:
            raise PolicyError([f"the file is {len(data) / 2**20:.1f} MiB; a policy file is at most "
                               f"{MAX_FILE_BYTES // 2**20} MiB"])
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise PolicyError([f"the file is not UTF-8 text ({e.reason} at byte {e.start}); a policy is a JSON "
                               "file"]) from None
        return cls.from_json(text)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and validate a policy file; every failure (missing, a folder, unreadable, too large, not UTF-8,
        not a valid policy) is one :class:`PolicyError` that names the file."""
        path = Path(path)
        try:
            if path.is_dir():
                raise PolicyError([f"{path} is a folder, not a policy file"])
            if not path.is_file():
                raise PolicyError([f"no policy file at {path}"])
            if path.stat().st_size > MAX_FILE_BYTES:
                raise PolicyError([f"{path} is {path.stat().st_size / 2**20:.1f} MiB; a policy file is at most "
                                   f"{MAX_FILE_BYTES // 2**20} MiB"])
            data = path.read_bytes()
        except OSError as e:
            raise PolicyError([f"cannot read {path}: {e.strerror or e}"]) from None
        try:
            return cls.from_bytes(data)
        except PolicyError as e:
            if len(e.problems) == 1 and str(path) in e.problems[0]:
                raise
            raise PolicyError([f"{path}: {p}" for p in e.problems]) from None

    # ---- transforms -------------------------------------------------------------------------------------------
    def remap(self, steps: int) -> Policy:
        """The same policy for another step count S₂ (the policy has S).

        With A(x) = the number of old keyframes at old steps < x, new step j is a keyframe where
        ⌊A((j+1)·S/S₂)·S₂/S⌋ increases (step 0 always). Consequences, pinned by tests: S₂ = S is the identity;
        fewer steps keep each block's keyframe *fraction* (50 steps every 2nd → 13 of 25: 0, 1, 3, 5, …, 23);
        more steps keep the keyframe *count* at the same relative positions (50 every 2nd → 100 every 4th), since
        A is a step function. To keep an interval M at a new step count, make the preset again (``policy make``).
        Mixing is defined on r = step / steps and carries over unchanged.
        """
        if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
            raise PolicyError([f"steps must be a whole number in 1..{MAX_STEPS}, got {steps!r}"])
        self.check()  # remapping an invalid policy would fail somewhere inside
        old = self.steps
        cum = torch.cat([torch.zeros(len(self.blocks), 1), self.keyframes.float().cumsum(1)], 1)  # A at integers
        x = (torch.arange(1, steps + 1, dtype=torch.float64) * old / steps).clamp(max=old)
        idx = torch.ceil(x - 1e-9).long()  # A(x) = keyframes at steps < x = cum[ceil(x)]
        a = cum[:, idx].double() * steps / old
        level = torch.floor(a + 1e-9)
        prev = torch.cat([torch.zeros(len(self.blocks), 1, dtype=level.dtype), level[:, :-1]], 1)
        mask = level > prev
        if len(self.blocks):
            mask[:, 0] = True
        prov = {"made_by": "remap", "from_steps": old, "source": self.provenance}
        return self.replaced(keyframes=mask, steps=steps, provenance=prov)

    def replaced(self, **changes) -> Policy:
        """A copy with some fields changed (lists and the mask copied, so the two never share state)."""
        fields = dict(blocks=list(self.blocks), keyframes=self.keyframes.clone(), steps=self.steps,
                      scheduler=self.scheduler, granularity=list(self.granularity),
                      kinds=list(self.kinds) if self.kinds else None, mixing=Mixing(**vars(self.mixing)),
                      model=dict(self.model), provenance=dict(self.provenance), reuse=list(self.reuse),
                      skip_reuse=self.skip_reuse, skip_space=self.skip_space, forecast_axis=self.forecast_axis,
                      cache_dtype=self.cache_dtype)
        return Policy(**{**fields, **changes})


def _json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _short(value) -> str:
    """``repr`` of a value from a file, cut so that one bad value cannot flood a message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse_constant(name: str):
    raise ValueError(f"not valid JSON: {name} is not a JSON number")


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _text_depth(text: str) -> int:
    """Deepest bracket nesting of JSON text, strings left out (vectorised: a running sum of opens minus closes)."""
    bare = _JSON_STRING.sub("", text).encode("utf-8", "replace")
    if not bare:
        return 0
    code = torch.frombuffer(bytearray(bare), dtype=torch.uint8)
    step = ((code == ord("[")) | (code == ord("{"))).long() - ((code == ord("]")) | (code == ord("}"))).long()
    return int(step.cumsum(0).max())


def _depth(value, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of parsed JSON (iterative, stops counting past ``limit``)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _finite(value) -> bool:
    """A real number (not a bool) with a finite float value."""
    try:  # an integer literal beyond a float's range (10**400) is not finite either
        return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))
    except OverflowError:
        return False


def _number(raw: dict, key: str, default: float, problems: list[str]) -> float:
    value = raw.get(key, default)
    if not _finite(value):
        problems.append(f"mixing.{key} must be a finite number, got {_short(value)}")
        return default
    return float(value)


def _mixing_from(raw, problems: list[str], notes: list[str]) -> Mixing:
    """The ``mixing`` object of a file (types checked here, ranges by :meth:`Mixing.problems`)."""
    if not isinstance(raw, dict):
        problems.append(f"\"mixing\" must be an object, got {_json_type(raw)}")
        return Mixing()
    if set(raw) - MIX_KEYS:
        notes.append(f"mixing: ignored unknown key(s): {', '.join(sorted(map(str, set(raw) - MIX_KEYS)))}")
    enabled, schedule = raw.get("enabled", False), raw.get("schedule", "linear")
    if not isinstance(enabled, bool):
        problems.append(f"mixing.enabled must be true or false, got {_short(enabled)}")
        enabled = False
    if not isinstance(schedule, str):
        problems.append(f"mixing.schedule must be a string, got {_short(schedule)}")
        schedule = "linear"
    n = len(problems)
    mixing = Mixing(enabled=enabled, schedule=schedule, center=_number(raw, "center", 0.5, problems),
                    slope=_number(raw, "slope", 30.0, problems), value=_number(raw, "value", 0.0, problems))
    if len(problems) == n:
        problems += mixing.problems()
    return mixing


def model_fingerprint(model) -> str:
    """Short hash of a denoiser's class and config: equal for the same architecture and sizes, not the weights."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model_fingerprint takes a denoiser (a torch.nn.Module), got {type(model).__name__}")
    config = {k: v for k, v in dict(getattr(model, "config", {}) or {}).items() if not str(k).startswith("_")}
    text = json.dumps({"class": type(model).__name__, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_ref(model) -> dict:
    return {"architecture": type(model).__name__, "fingerprint": model_fingerprint(model)}
