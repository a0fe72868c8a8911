"""Keyframe policies: what FRDiff recomputes at each step, as data (one versioned JSON format).

A policy holds, for one denoiser, scheduler and step count:

- ``keyframes``: a boolean mask ``[blocks × steps]``. ``True`` = the block is computed at that step (a keyframe for
  it, its cache refreshed); ``False`` = the block reuses what it cached at its last keyframe (PAPER.md, "Feature
  reuse"). Step 0 is always a keyframe for every block. Blocks the policy does not list are always computed.
- ``granularity`` per block: ``"feature"`` reuses the paper's timestep-independent part (resnet ``conv1`` branch,
  attention residual branch, DiT self-attention before gating); ``"block"`` reuses the whole output and skips the
  block (what DeepCache-style policies need).
- ``mixing``: score mixing (PAPER.md, "Score mixing"). At a step where any listed block reuses (an *FR step*) the
  denoiser output is ε̂ = λ(r)·ε_FR + (1 − λ(r))·ε_key, r = step / steps. Where λ = 0 the denoiser is not called.
- ``model``: the architecture and a fingerprint of the denoiser's config, so a policy is not run on another model.
- ``provenance``: how the policy was made, its parameters and the metrics measured when it was made.

A step is *full* when every listed block is a keyframe there; ε_key is the output of the most recent full step.

JSON (``"format": "frdiff-policy", "version": 1``) stores the mask as one string of ``1``/``0`` per block, so a
policy file is readable and diffable. Loading validates everything and reports every problem at once, one per line
(:class:`PolicyError`); nothing is evaluated or unpickled. The format is documented in ``docs/policy-format.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "frdiff-policy"
VERSION = 1
GRANULARITIES = ("feature", "block")
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


class PolicyError(ValueError):
    """A policy that cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Mixing:
    """Score-mixing schedule λ(r), r = step / steps (PAPER.md, "Score mixing").

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
            v = 1.0 / (1.0 + math.exp(-self.slope * (r - self.center)))
            return 0.0 if v < SIGMOID_EPS else 1.0 if v > 1 - SIGMOID_EPS else v
        return min(1.0, max(0.0, (self.slope * (r - self.center) + 2.0) / 4.0))

    def curve(self, steps: int) -> list[float]:
        """λ at every step index 0..steps−1."""
        return [self.lam(s / steps) for s in range(steps)]

    def problems(self) -> list[str]:
        out = []
        if self.schedule not in MIX_SCHEDULES:
            out.append(f"mixing.schedule is {self.schedule!r}; use one of {', '.join(MIX_SCHEDULES)}")
        if not 0.0 <= self.center <= 1.0:
            out.append(f"mixing.center must lie in [0, 1], got {self.center}")
        if not self.slope > 0:
            out.append(f"mixing.slope must be > 0, got {self.slope}")
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

    def __post_init__(self):
        self.keyframes = torch.as_tensor(self.keyframes, dtype=torch.bool).reshape(len(self.blocks), -1).clone()
        if self.granularity is None:
            kinds = self.kinds or ["resnet"] * len(self.blocks)
            self.granularity = ["block" if k == "generic" else "feature" for k in kinds]

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

    def denoiser_calls(self) -> int:
        return sum(k != "skip" for k in self.step_kinds())

    # ---- validation -------------------------------------------------------------------------------------------
    def problems(self, model_blocks: dict[str, str] | None = None, fingerprint: str | None = None,
                 steps: int | None = None) -> list[str]:
        """Every reason this policy cannot run, as readable lines (empty = valid).

        model_blocks: ``{name: kind}`` of the target denoiser (``dict(find_blocks(model))``); fingerprint: its
        :func:`model_fingerprint`; steps: the step count it will run with.
        """
        out: list[str] = []
        nb = len(self.blocks)
        if self.steps < 1:
            out.append(f"steps must be ≥ 1, got {self.steps}")
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
        out += self.mixing.problems()
        if steps is not None and steps != self.steps:
            out.append(f"the policy is for {self.steps} steps but the run has {steps}; remap it "
                       f"(`python -m workbench policy remap P.json --steps {steps}`)")
        if fingerprint is not None and self.model.get("fingerprint") not in (None, fingerprint):
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
                 "keyframes": "".join("1" if v else "0" for v in self.keyframes[i].tolist())}
                for i, b in enumerate(self.blocks)
            ],
            "mixing": {"enabled": self.mixing.enabled, "schedule": self.mixing.schedule,
                       "center": self.mixing.center, "slope": self.mixing.slope, "value": self.mixing.value},
            "provenance": self.provenance,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data) -> Policy:
        """Build and validate a policy from parsed JSON; :class:`PolicyError` lists every problem."""
        if not isinstance(data, dict):
            raise PolicyError([f"a policy must be a JSON object, got {type(data).__name__}"])
        problems = []
        if data.get("format") != FORMAT:
            problems.append(f"not an FRDiff policy: \"format\" is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != VERSION:
            problems.append(f"unsupported policy version {data.get('version')!r}; this build reads version {VERSION}")
        if problems:
            raise PolicyError(problems)
        steps = data.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise PolicyError([f"\"steps\" must be an integer, got {steps!r}"])
        raw_blocks = data.get("blocks")
        if not isinstance(raw_blocks, list):
            raise PolicyError(["\"blocks\" must be a list of {name, granularity, keyframes}"])
        names, kinds, grans, rows = [], [], [], []
        for i, b in enumerate(raw_blocks):
            if not isinstance(b, dict) or not isinstance(b.get("name"), str):
                problems.append(f"blocks[{i}] must be an object with a \"name\"")
                continue
            mask = b.get("keyframes")
            if not isinstance(mask, str) or set(mask) - {"0", "1"}:
                problems.append(f"block {b['name']}: keyframes must be a string of 0/1, one per step")
                continue
            if len(mask) != steps:
                problems.append(f"block {b['name']}: keyframes has {len(mask)} steps, the policy {steps}")
                continue
            names.append(b["name"])
            kinds.append(b.get("kind") or "resnet")
            grans.append(b.get("granularity", "feature"))
            rows.append([c == "1" for c in mask])
        mix = data.get("mixing", {})
        if not isinstance(mix, dict):
            problems.append("\"mixing\" must be an object")
            mix = {}
        try:
            mixing = Mixing(enabled=bool(mix.get("enabled", False)), schedule=str(mix.get("schedule", "linear")),
                            center=float(mix.get("center", 0.5)), slope=float(mix.get("slope", 30.0)),
                            value=float(mix.get("value", 0.0)))
        except (TypeError, ValueError):
            problems.append("mixing: center, slope and value must be numbers")
            mixing = Mixing()
        if problems:
            raise PolicyError(problems)
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        provenance = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
        mask = torch.tensor(rows, dtype=torch.bool) if rows else torch.zeros(0, max(steps, 0), dtype=torch.bool)
        policy = cls(blocks=names, keyframes=mask, steps=steps, scheduler=str(data.get("scheduler", "ddim")),
                     granularity=grans, kinds=kinds, mixing=mixing, model=model, provenance=provenance)
        return policy.check()

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyError([f"not valid JSON: {e}"]) from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise PolicyError([f"no policy file at {path}"])
        return cls.from_json(path.read_text())

    # ---- transforms -------------------------------------------------------------------------------------------
    def remap(self, steps: int) -> Policy:
        """The same policy for another step count S₂ (the policy has S).

        With A(x) = the number of old keyframes at old steps < x, new step j is a keyframe where
        ⌊A((j+1)·S/S₂)·S₂/S⌋ increases (step 0 always). Consequences, pinned by tests: S₂ = S is the identity;
        fewer steps keep each block's keyframe *fraction* and pattern (50 steps every 2nd → 25 steps every 2nd);
        more steps keep the keyframe *count* at the same relative positions (50 every 2nd → 100 every 4th), since
        A is a step function. To keep an interval M at a new step count, make the preset again (``policy make``).
        Mixing is defined on r = step / steps and carries over unchanged.
        """
        if steps < 1:
            raise PolicyError([f"steps must be ≥ 1, got {steps}"])
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
        return Policy(blocks=list(self.blocks), keyframes=mask, steps=steps, scheduler=self.scheduler,
                      granularity=list(self.granularity), kinds=list(self.kinds) if self.kinds else None,
                      mixing=Mixing(**vars(self.mixing)), model=dict(self.model), provenance=prov)


def model_fingerprint(model) -> str:
    """Short hash of a denoiser's class and config: equal for the same architecture and sizes, not the weights."""
    config = {k: v for k, v in dict(getattr(model, "config", {}) or {}).items() if not str(k).startswith("_")}
    text = json.dumps({"class": type(model).__name__, "config": config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_ref(model) -> dict:
    return {"architecture": type(model).__name__, "fingerprint": model_fingerprint(model)}
