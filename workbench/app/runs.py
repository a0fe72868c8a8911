"""The app's runs of a (shared, cached) pipeline, as plain functions: no Streamlit here, unit-tested.

Every function that runs the denoiser does it inside ``frdiff.exclusive`` (plain runs, recordings) or through
:func:`workbench.compare.compare` (which takes ``frdiff.apply`` / ``frdiff.exclusive`` per variant), so a pipeline
shared by several browser sessions runs one job at a time and never keeps another job's hooks. Long jobs take a
``progress`` callback and a ``cancel`` callable like the rest of the workbench.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import frdiff
from frdiff import Policy
from workbench.compare import Cancelled, Variant, compare


def is_class_pipeline(pipe) -> bool:
    """True for the project's class-conditional ``ShapesPipeline`` (sampling, comparison); other pipelines
    (text-to-image) are recorded from prompts."""
    return "class_names" in dict(getattr(pipe, "config", {}) or {}) and hasattr(pipe, "denoise")


def class_names(pipe) -> list[str]:
    return list(dict(getattr(pipe, "config", {}) or {}).get("class_names") or [])


def savings_of(pipe) -> dict:
    """FLOP shares a reuse step saves per block (``frdiff.measure_savings`` on one real call), under the lock."""
    from workbench.compare import measure_savings

    with frdiff.exclusive(pipe):
        return measure_savings(pipe)


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW tensor → [N, H, W, 3] float array in [0, 1] (what figures and ``st.image`` take)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


# ---- sampling while watching x0 -------------------------------------------------------------------------------------
def sample_watching_x0(pipe, label: int | str, seed: int, steps: int = 30, scheduler: str | None = "ddim",
                       on_step: Callable[[int, int, np.ndarray, int], None] | None = None,
                       cancel: Callable[[], bool] | None = None) -> dict:
    """Sample one image of ``label`` (a class index, or a prompt for a text-to-image pipeline) and, at every step,
    the model's current estimate of the clean image x̂0.

    x̂0 = (x_t − √(1 − ᾱ_t)·ε̂) / √ᾱ_t from the denoiser's input and its guided output (DDPM eq. 15 / DDIM eq. 12);
    a latent model's x̂0 is decoded by its VAE for display. ``on_step(step, steps, x0 [H, W, 3] in [0, 1],
    timestep)`` is called after each step. Returns ``{"x0": [steps, H, W, 3], "timesteps": [...], "image": [H, W,
    3]}``.
    """
    from workbench.models.schedulers import make_scheduler
    from workbench.sampling import sample

    latent = not is_class_pipeline(pipe)
    if latent and (not isinstance(label, str) or getattr(pipe, "vae", None) is None
                   or getattr(pipe, "unet", None) is None):
        raise ValueError("watching x̂0 needs a shipped class-conditional model with a class, or a UNet latent "
                         "text-to-image pipeline (Stable Diffusion's kind) with a prompt")
    guidance = guidance_of(pipe)
    channels = (pipe.unet if latent else pipe.denoiser).config.in_channels
    frames: list[np.ndarray] = []
    timesteps: list[int] = []
    sched = make_scheduler(scheduler, pipe.scheduler.config) if scheduler else pipe.scheduler
    alphas = sched.alphas_cumprod.double()

    def hook(_m, args, kwargs, output):
        if cancel is not None and cancel():
            raise Cancelled("cancelled")
        x = (args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))).detach().double()
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        t = int(torch.as_tensor(t).flatten()[0])
        eps = frdiff.blocks.first_tensor(output).detach().double()[:, :channels]
        if guidance > 1.0 and eps.shape[0] % 2 == 0:  # CFG batch [unconditional, conditional]
            uncond, cond = eps.chunk(2)
            eps = uncond + guidance * (cond - uncond)
            x = x[: x.shape[0] // 2]
        a = alphas[t]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        if latent:  # the VAE shows what the latent estimate looks like
            vae = pipe.vae
            with torch.no_grad():
                x0 = vae.decode((x0 / vae.config.scaling_factor).to(vae.dtype)).sample.double()
        frame = to_hwc(x0.clamp(-1, 1).float())[0]
        frames.append(frame)
        timesteps.append(t)
        if on_step is not None:
            on_step(len(frames) - 1, steps, frame, t)

    den = frdiff.denoiser_of(pipe)
    with frdiff.exclusive(pipe):
        handle = den.register_forward_hook(hook, with_kwargs=True)
        try:
            condition = label if latent else int(label)
            result = sample(pipe, [condition], [int(seed)], steps=steps, scheduler=scheduler)
        finally:
            handle.remove()
    return {"x0": np.stack(frames), "timesteps": timesteps, "image": to_hwc(result.images)[0],
            "latency_s": result.latency_s}


# ---- recording ------------------------------------------------------------------------------------------------------
def guidance_of(pipe) -> float:
    """The guidance a sample of ``pipe`` uses by default: the shipped models' own, 7.5 (diffusers' SD default)
    otherwise."""
    return float(getattr(pipe.config, "default_guidance_scale", 7.5))


def example_prompts(pipe, n: int = 1) -> list[str]:
    """Prompts to start a text-to-image page with: scene captions for tiny-sd (the prompts it was trained on),
    else a generic one."""
    from workbench.models.catalog import embedded_path

    folder = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if folder and Path(str(folder)).resolve() == embedded_path("tiny-sd").resolve():
        from workbench.models.scenes import eval_prompts

        return eval_prompts(n)
    return ["a photograph of an astronaut riding a horse"] * n


def plan_store(pipe, seeds: list[int], steps: int, scheduler: str, reduction: str, blocks: list[str] | None = None,
               labels: list[int] | None = None, prompts: list[str] | None = None) -> dict:
    """What a recording would store, before starting it: size on disk, device memory, blocks (one real forward)."""
    from workbench.models.schedulers import scheduler_swapped
    from workbench.record.plan import REDUCTIONS, plan_recording
    from workbench.record.recorder import recording_call

    conditions = labels if labels is not None else prompts
    if not conditions:
        raise ValueError("give at least one class or prompt")
    with frdiff.exclusive(pipe), scheduler_swapped(pipe, scheduler):
        call = recording_call(pipe, conditions, seeds, steps, guidance_of(pipe))
        plan = plan_recording(pipe, call, steps, len(conditions), REDUCTIONS[reduction], blocks or None)
    return {"estimate_bytes": plan.estimate_bytes, "device_bytes": plan.device_bytes, "blocks": len(plan.blocks),
            "steps": steps, "images": plan.images}


def record(pipe, model_id: str, out_dir: str | Path, seeds: list[int], steps: int, scheduler: str, reduction: str,
           blocks: list[str] | None = None, labels: list[int] | None = None, prompts: list[str] | None = None,
           progress: Callable[[int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
           disk_budget: int | None = None) -> Path:
    """:func:`workbench.record.recorder.record_run` under the pipeline's lock, into a new or empty ``out_dir``
    (:func:`run_folder` makes one). When the recording is refused or fails before writing anything, the empty
    folder is removed: nothing is left behind."""
    from workbench.record.recorder import record_run

    out = Path(out_dir)
    try:
        with frdiff.exclusive(pipe):
            return record_run(pipe, model_id, out, labels=labels, prompts=prompts, seeds=seeds, steps=steps,
                              scheduler=scheduler, reduction=reduction, blocks=blocks or None, disk_budget=disk_budget,
                              progress=progress, cancel=cancel)
    except BaseException:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def run_folder(root: str | Path, model_id: str, condition: str, stamp: str) -> Path:
    """Make a new, empty run folder below ``root`` with a readable name (``MODEL-CONDITION-STAMP``) and return it.

    Made atomically with ``os.mkdir``, which fails when the name exists: two sessions recording in the same second
    get ``…-STAMP`` and ``…-STAMP-2``, never one folder between them."""
    model = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_id).name or model_id).strip("-") or "model"
    cond = re.sub(r"[^A-Za-z0-9._-]+", "-", condition)[:24].strip("-") or "run"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = f"{model}-{cond}-{stamp}"
    for i in range(1, 10_000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free run folder name {base}-N below {root}")


def predictability(store) -> dict:
    """:func:`workbench.analysis.predictability.store_predictability` of a run (every block, hold and both
    forecasts, intervals 1–4), for the Similarity page."""
    from workbench.analysis.predictability import store_predictability

    return store_predictability(store)


def all_stats(store) -> dict[str, np.ndarray]:
    """Streaming statistics of every block, ``{"cosine", "rel_l1"}: [steps, blocks, images]`` (conditional half)."""
    per = [store.stats(b) for b in store.blocks]
    steps = store.steps_done
    return {k: np.stack([p[k] for p in per], 1) if per else np.zeros((steps, 0, 0)) for k in ("cosine", "rel_l1")}


def adjacent_values(store, metric: str = "cosine", stats: dict | None = None) -> np.ndarray:
    """Blocks × steps adjacent-step ``metric`` (mean over the run's samples; step 0 NaN) from the streaming stats."""
    values = (stats or all_stats(store))[metric]  # [steps, blocks, images]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # step 0 is NaN for every sample
        return np.nanmean(values, axis=2).T


def quick_heatmap(pipe, model_id: str, label: int | str, seeds: list[int], steps: int = 20,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None) -> dict:
    """A statistics-only recording in a temporary folder, reduced to the blocks × steps adjacent cosine (the Tour's
    heatmap; ``label``: a class index, or a prompt). The folder is deleted afterwards."""
    from workbench.record.store import FeatureStore

    tmp = Path(tempfile.mkdtemp(prefix="frdiff-tour-"))
    try:
        conditions = {"prompts": [label] * len(seeds)} if isinstance(label, str) else \
            {"labels": [int(label)] * len(seeds)}
        record(pipe, model_id, tmp / "run", seeds, steps, "ddim", "stats", progress=progress, cancel=cancel,
               **conditions)
        store = FeatureStore.open(tmp / "run")
        return {"cosine": adjacent_values(store, "cosine"), "rel_l1": adjacent_values(store, "rel_l1"),
                "blocks": store.blocks, "timesteps": store.timesteps}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- comparisons ----------------------------------------------------------------------------------------------------
def fewer_steps(n: int) -> Variant:
    return Variant(f"{n} steps", None, steps=int(n))


TOUR_FEWER, TOUR_FR, TOUR_MIX, TOUR_FORECAST = "fewer steps", "feature reuse", "reuse + score mixing", "forecast"


def tour_variants(pipe, steps: int) -> list[Variant]:
    """The Tour's ways to do about half the work: fewer steps, feature reuse every 2nd step (the paper's FRDiff),
    reuse + score mixing, and whole blocks forecast from their last three keyframes (TaylorSeer's idea)."""
    den = frdiff.denoiser_of(pipe)
    forecast = frdiff.make_preset("uniform", den, steps, interval=2, reuse="taylor2")
    return [
        Variant(TOUR_FEWER, None, steps=max(1, steps // 2)),
        Variant(TOUR_FR, frdiff.make_preset("uniform", den, steps, interval=2)),
        Variant(TOUR_MIX, frdiff.make_preset("uniform", den, steps, interval=2, mix=True)),
        Variant(TOUR_FORECAST, forecast.replaced(granularity=["block"] * len(forecast.blocks))),
    ]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}×" if b > 0 else "∞×"


def tour_reading(result: dict) -> list[str]:
    """What the Tour's comparison measured, in sentences made from its numbers — so the text beside the figures
    cannot contradict them. The paper's claim (fewer steps lose fine detail, feature reuse keeps it) is stated as
    holding or not holding here."""
    v = {x["name"]: x for x in result["variants"]}
    spectra = result["error_spectra"]
    ranked = sorted(result["variants"], key=lambda x: -x["psnr"])
    lines = ["Closest to the full run: " + ", ".join(f"**{x['name']}** {x['psnr']:.1f} dB" for x in ranked) + "."]
    if TOUR_FEWER in spectra and TOUR_FR in spectra:
        from workbench.analysis.frequency import band_errors

        few, fr = band_errors(spectra[TOUR_FEWER]), band_errors(spectra[TOUR_FR])
        if fr["high"] < few["high"]:
            lines.append(f"At high frequencies (fine detail) feature reuse errs {_ratio(few['high'], fr['high'])} less "
                         f"than {v[TOUR_FEWER]['steps']} steps, as the paper finds: reuse keeps detail.")
        else:
            lines.append(f"The paper finds that fewer steps lose fine detail and reuse keeps it; here it does not "
                         f"hold: at high frequencies feature reuse errs {_ratio(fr['high'], few['high'])} as much as "
                         f"{v[TOUR_FEWER]['steps']} steps.")
        where = "low" if few["low"] > few["high"] else "high"
        lines.append(f"{v[TOUR_FEWER]['steps']} steps err most at {where} frequencies "
                     f"({'structure' if where == 'low' else 'fine detail'}): {few['low']:.2g} (low) vs "
                     f"{few['high']:.2g} (high).")
    if TOUR_FORECAST in v and TOUR_FR in v:
        gain = v[TOUR_FORECAST]["psnr"] - v[TOUR_FR]["psnr"]
        lines.append(f"Forecasting instead of holding: {gain:+.1f} dB over plain feature reuse "
                     f"({'better' if gain > 0 else 'worse'}), at "
                     f"{1 / v[TOUR_FORECAST]['predicted_speedup']:.2f} of the full run's FLOPs against "
                     f"{1 / v[TOUR_FR]['predicted_speedup']:.2f}.")
    return lines


def unique_variants(variants: list[Variant]) -> list[Variant]:
    """``variants`` with names made unique, and none called ``reference`` (the comparison's own): results are keyed
    by name, so a library policy named ``reference`` or ``2 steps`` would have replaced another's images."""
    import dataclasses

    seen, out = {"reference"}, []
    for v in variants:
        name, k = v.name, 2
        while name in seen:
            name, k = f"{v.name} ({k})", k + 1
        seen.add(name)
        out.append(v if name == v.name else dataclasses.replace(v, name=name))
    return out


SPEED_REPEATS = 3  # interleaved timing rounds of a comparison: the speedup shown is their median, with the spread


def run_comparison(pipe, variants: list[Variant], labels: list[int], seeds: list[int], steps: int,
                   scheduler: str | None = "ddim", progress: Callable[[dict], None] | None = None,
                   cancel: Callable[[], bool] | None = None, repeats: int = SPEED_REPEATS, options=None) -> dict:
    """:func:`workbench.compare.compare` (``repeats`` interleaved timing rounds) with images kept, plus each
    variant's error spectrum against the reference and its images as ``[N, H, W, 3]`` arrays
    (``result["arrays"][name]``)."""
    from workbench.analysis.frequency import error_spectrum

    result = compare(pipe, variants, labels, seeds, steps=steps, scheduler=scheduler, progress=progress,
                     cancel=cancel, keep_images=True, repeats=repeats, options=options)
    ref = result["reference"]["images"]
    result["arrays"] = {"reference": to_hwc(ref)}
    result["error_spectra"] = {}
    for v in result["variants"]:
        result["arrays"][v["name"]] = to_hwc(v["images"])
        result["error_spectra"][v["name"]] = error_spectrum(v["images"].numpy(), ref.numpy())
    return result


def speedup_text(v: dict) -> str:
    """``2.10× (1.95–2.31 over 3 rounds)``: the median measured speedup with its spread."""
    runs = v.get("speedup_runs") or [v["speedup"]]
    spread = f" ({min(runs):.2f}–{max(runs):.2f} over {len(runs)} rounds)" if len(runs) > 1 else ""
    return f"{v['speedup']:.2f}×{spread}"


def speedup_note(v: dict) -> str | None:
    """One line explaining a measured speedup far from the FLOP prediction (> 15 % apart), else ``None``."""
    measured, predicted = v["speedup"], v["predicted_speedup"]
    if abs(measured / predicted - 1) <= 0.15:
        return None
    if measured > predicted:
        return (f"{v['name']}: measured {measured:.2f}× is above the {predicted:.2f}× FLOPs predict — a reuse step "
                "also skips work FLOPs do not count (normalisations, activations, memory traffic, Python overhead), "
                "which on these tiny models is a large part of a step.")
    return (f"{v['name']}: measured {measured:.2f}× is below the {predicted:.2f}× FLOPs predict — the skipped parts "
            "are cheaper in time than in FLOPs here (the remaining layers and the per-step overhead dominate).")


TABLE_COLUMNS = {"variant": "variant", "steps": "steps", "denoiser_calls": "denoiser calls", "psnr": "PSNR (dB)",
                 "ssim": "SSIM", "max_abs_diff": "max |difference|", "class_accuracy": "class accuracy",
                 "fd_shapes": "FD-shapes", "latency_s": "latency (s)", "speedup": "measured speedup",
                 "predicted_speedup": "FLOP-predicted speedup"}
_DIGITS = {"psnr": 1, "ssim": 3, "max_abs_diff": 3, "class_accuracy": 2, "fd_shapes": 2, "latency_s": 2,
           "predicted_speedup": 2}


def metrics_rows(result: dict) -> list[dict]:
    """One table row per variant (the reference first), with readable headers and units, numbers rounded to what
    the measurement supports, speedups with their spread, and "–" where a metric does not apply."""
    ref = result["reference"]
    rows = [{"variant": "reference", "steps": ref["steps"], "denoiser_calls": ref["denoiser_calls"],
             "class_accuracy": ref.get("class_accuracy"), "fd_shapes": ref.get("fd_shapes"),
             "latency_s": ref["latency_s"], "speedup": "1.00×", "predicted_speedup": 1.0}]
    for v in result["variants"]:
        rows.append({"variant": v["name"], **{k: v.get(k) for k in TABLE_COLUMNS if k not in ("variant", "speedup")},
                     "speedup": speedup_text(v)})
    out = []
    for row in rows:
        cells = {}
        for key, header in TABLE_COLUMNS.items():
            value = row.get(key)
            if value is None:
                cells[header] = "–"
            elif key in _DIGITS and isinstance(value, float):
                cells[header] = round(value, _DIGITS[key])
            else:
                cells[header] = value
        out.append(cells)
    return out


def fit_steps(policy: Policy, steps: int) -> tuple[Policy, str | None]:
    """``policy`` for ``steps`` steps: itself, or remapped (with a note saying so)."""
    if policy.steps == steps:
        return policy, None
    return policy.remap(steps), f"remapped from {policy.steps} to {steps} steps"


# ---- attribution ----------------------------------------------------------------------------------------------------
def block_group(name: str) -> str:
    """The group a block belongs to: its UNet level (``down_blocks.1``, ``mid_block``, ``up_blocks.0``) or, for
    transformers, the block itself (``transformer_blocks.3``)."""
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        return ".".join(parts[:2])
    if parts[0] == "mid_block":
        return "mid_block"
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else name


def reused_groups(policy: Policy) -> dict[str, list[int]]:
    """Groups of blocks that reuse somewhere in ``policy`` → their row indices, in block order."""
    groups: dict[str, list[int]] = {}
    reuses = (~policy.keyframes).any(1).tolist() if policy.blocks else []
    for i, b in enumerate(policy.blocks):
        if reuses[i]:
            groups.setdefault(block_group(b), []).append(i)
    return groups


def attribution_variants(policy: Policy, name: str = "policy") -> list[Variant]:
    """The policy itself, then one variant per reused group with that group computed at every step again."""
    out = [Variant(name, policy)]
    for group, rows in reused_groups(policy).items():
        p = Policy(blocks=list(policy.blocks), keyframes=policy.keyframes.clone(), steps=policy.steps,
                   scheduler=policy.scheduler, granularity=list(policy.granularity),
                   kinds=list(policy.kinds) if policy.kinds else None, mixing=policy.mixing, model=dict(policy.model),
                   provenance={"made_by": "attribution", "recomputed": group})
        p.keyframes[rows] = True
        out.append(Variant(f"{group} recomputed", p))
    return out


def attribution_rows(result: dict, name: str = "policy") -> list[dict]:
    """Per group: PSNR / SSIM gained by computing it at every step again, and the predicted speedup given up."""
    by = {v["name"]: v for v in result["variants"]}
    base = by[name]
    rows = []
    for v in result["variants"]:
        if v["name"] == name:
            continue
        rows.append({"group": v["name"].removesuffix(" recomputed"), "psnr": v["psnr"],
                     "psnr_gain_db": v["psnr"] - base["psnr"], "ssim_gain": v["ssim"] - base["ssim"],
                     "predicted_speedup": v["predicted_speedup"],
                     "speedup_given_up": base["predicted_speedup"] - v["predicted_speedup"]})
    return sorted(rows, key=lambda r: r["psnr_gain_db"], reverse=True)


def attribution_coverage(result: dict, policy: Policy, name: str = "policy") -> str:
    """What the attribution explains: the policy's loss against the full run, the part its groups win back one at
    a time, and that skipped steps (λ = 0) are outside it (no block runs there to recompute)."""
    base = next(v for v in result["variants"] if v["name"] == name)
    gains = [v["psnr"] - base["psnr"] for v in result["variants"] if v["name"] != name]
    skipped = policy.step_kinds().count("skip")
    text = (f"{name} is {base['psnr']:.1f} dB from the full run; recomputing its groups one at a time wins back "
            f"{sum(g for g in gains if g > 0):.2f} dB in all (groups interact, so the parts need not add up).")
    if skipped:
        text += (f" Its {skipped} skipped steps (λ = 0: no denoiser call) are not attributed: no block runs there, so "
                 "none can be recomputed; their cost shows only against a policy without skips.")
    return text


def enlarge(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Nearest-neighbour upscaling of an ``[H, W, C]`` image to about ``size`` pixels (crisp pixels on a projector)."""
    factor = max(1, size // max(image.shape[:2]))
    return np.repeat(np.repeat(np.asarray(image), factor, 0), factor, 1)


def evenly(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of ``range(n)``, first and last included."""
    k = min(k, n)
    if k <= 0:
        return []
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


def preset_variants(pipe, names: list[str], steps: int) -> list[Variant]:
    """Variants from labels like ``"uniform M=2"``, ``"uniform M=2 + mixing"``, ``"reduced-nfe M=3"``."""
    den = frdiff.denoiser_of(pipe)
    out = []
    for name in names:
        m = re.fullmatch(r"([\w-]+) M=(\d+)( \+ mixing)?", name)
        if m is None:
            raise ValueError(f"cannot read the preset label {name!r}")
        out.append(Variant(name, frdiff.make_preset(m.group(1), den, steps, interval=int(m.group(2)),
                                                    mix=bool(m.group(3)))))
    return out


PRESET_LABELS = ["uniform M=2", "uniform M=2 + mixing", "uniform M=3", "uniform M=3 + mixing", "reduced-nfe M=2",
                 "deepcache M=2"]


def parse_steps_list(text: str) -> list[int]:
    """``"10, 5"`` → ``[10, 5]`` (reduced-step baselines); a readable ValueError otherwise."""
    out = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"reduced-step baselines: {part!r} is not a positive whole number of steps")
        out.append(int(part))
    return out


def speedup_figure(result: dict):
    """Measured (median of the interleaved rounds, with their spread as error bars) vs FLOP-predicted speedup per
    variant, grouped bars."""
    import plotly.graph_objects as go

    vs = result["variants"]
    names = [v["name"] for v in vs]
    lo = [v["speedup"] - min(v.get("speedup_runs") or [v["speedup"]]) for v in vs]
    hi = [max(v.get("speedup_runs") or [v["speedup"]]) - v["speedup"] for v in vs]
    fig = go.Figure([go.Bar(name="measured (median, spread of the rounds)", x=names, y=[v["speedup"] for v in vs],
                            error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo)),
                     go.Bar(name="predicted from FLOPs", x=names, y=[v["predicted_speedup"] for v in vs])])
    fig.update_layout(barmode="group", title="Speedup over the reference run", yaxis_title="speedup (×)",
                      font=dict(size=16))
    return fig
