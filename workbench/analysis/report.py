"""The per-run report behind ``python -m workbench analyze``: redundancy per block, its spread across samples, and
the frequency content of the features, of the predicted x0 at each step and of the final images.

What comes from where (every report says it under ``sources``):

- similarity and spread: the streaming statistics, computed on the full block outputs during sampling, so they
  exist for every reduction, ``stats`` included;
- feature spectra: the stored maps (``full``: as computed, ``pool16``: pooled to ≤ 16×16, so bins above the pooled
  Nyquist are missing); none for ``stats`` runs or blocks whose output is not a map;
- predicted x0 and final images: the stored denoiser inputs and outputs (every reduction). With classifier-free
  guidance the noise prediction the scheduler used is rebuilt as ε_u + w·(ε_c − ε_u); the final sample is the
  output of the scheduler's last step, replaying every step on the stored inputs so that multistep schedulers
  have their history (a complete run only). For latent pipelines the final sample is a latent (the VAE is not
  run), for pixel pipelines it is the image, clamped to [−1, 1] as the pipeline does. x̂0 uses the recorded
  (integer) timesteps and no clipping.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from workbench.analysis.frequency import band_energy, predicted_x0, spectra_over_time
from workbench.analysis.reading import iter_maps, read_stats
from workbench.analysis.similarity import sample_spread, summarize_block

BAND_EDGES = (1 / 3, 2 / 3)  # fractions of the Nyquist radius: low ≤ 1/3 < mid ≤ 2/3 < high
PIXEL_PIPELINES = {"ShapesPipeline"}  # pipelines whose samples are images (no VAE)


def jsonable(obj):
    """Arrays to lists and NaN/inf to None, recursively, so that ``json.dumps`` writes strict JSON."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _bands(spectra: np.ndarray) -> dict[str, np.ndarray]:
    return band_energy(spectra, BAND_EDGES)


def _scheduler(manifest: dict):
    import diffusers

    info = manifest["scheduler"]
    cls = getattr(diffusers, info["class"], None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"scheduler class {info['class']!r} is not a diffusers scheduler")
    return cls.from_config(info["config"])


def guided_noise(store, latents: np.ndarray | None = None) -> np.ndarray:
    """The model output the scheduler stepped with, ``[steps, images, C, H, W]``: with classifier-free guidance
    ε_u + w·(ε_c − ε_u) from the stored halves; channels beyond the sample's (learned variance) are dropped."""
    channels = (store.latents() if latents is None else latents).shape[2]
    output = store.denoiser_output(cond=None)[:, :, :channels]
    cfg = store.manifest["cfg"]
    if cfg["layout"] == "none":
        return output
    n = int(cfg["images"])
    first, second = output[:, :n].astype(np.float64), output[:, n:].astype(np.float64)
    cond, uncond = (first, second) if cfg["layout"] == "cond_first" else (second, first)
    return uncond + float(store.manifest["guidance_scale"]) * (cond - uncond)


def final_sample(store, noise: np.ndarray | None = None, latents: np.ndarray | None = None) -> np.ndarray:
    """The run's final sample ``[images, C, H, W]``, by replaying the scheduler on the stored denoiser inputs and
    guided outputs (multistep schedulers rebuild their history on the way). Needs a complete run."""
    if not store.complete:
        raise ValueError("the run is incomplete: its last step is missing")
    sched = _scheduler(store.manifest)
    sched.set_timesteps(store.manifest["steps"])
    latents = torch.from_numpy(store.latents() if latents is None else latents)
    noise = guided_noise(store, latents.numpy()) if noise is None else noise
    eps = torch.as_tensor(noise, dtype=latents.dtype)
    sample = None
    for i, t in enumerate(sched.timesteps):
        scale = sched.scale_model_input(torch.ones((), dtype=latents.dtype), t)  # Euler-type inputs are scaled
        sample = sched.step(eps[i], t, latents[i] / scale, return_dict=False)[0]
    out = sample.numpy()
    if store.manifest["model"].get("pipeline") in PIXEL_PIPELINES:
        out = np.clip(out, -1.0, 1.0)
    return out


def _alphas_cumprod(manifest: dict) -> np.ndarray:
    sched = _scheduler(manifest)
    return np.asarray(sched.alphas_cumprod, dtype=np.float64)


def frequency_report(store) -> dict:
    """Radial spectra and low/mid/high band energy of the predicted x0 per step and of the final sample."""
    m = store.manifest
    steps = store.steps_done
    recorded = list(m.get("recorded_timesteps", []))[:steps]
    timesteps = recorded if len(recorded) == steps else store.timesteps
    prediction = m["scheduler"]["config"].get("prediction_type", "epsilon")
    latents = store.latents()
    noise = guided_noise(store, latents)
    x0 = predicted_x0(latents, noise, timesteps, _alphas_cumprod(m), prediction)
    spectra = spectra_over_time(x0)
    report: dict = {
        "band_edges": list(BAND_EDGES),
        "predicted_x0": {"prediction_type": prediction, "spectra": spectra, "bands": _bands(spectra)},
    }
    space = "pixel" if m["model"].get("pipeline") in PIXEL_PIPELINES else "latent"
    if store.complete:
        final = final_sample(store, noise, latents)
        spectrum = spectra_over_time(final[None])[0]
        report["final"] = {"space": space, "spectrum": spectrum, "bands": _bands(spectrum)}
    else:
        report["final"] = None
    return report


def feature_spectra(store, cond: bool | None = True, maps_analysis: dict | None = None) -> dict[str, np.ndarray]:
    """Channel- and sample-averaged spectrum per step ``[steps, bins]`` of every block stored as a map."""
    if maps_analysis is not None:
        return {k: v["spectra"] for k, v in maps_analysis.items() if "spectra" in v}
    return {name: spectra_over_time(maps) for name, maps in iter_maps(store, cond=cond) if maps.ndim == 5}


def analyze_store(store, threshold: float = 0.1, cond: bool | None = True,
                  maps_analysis: dict | None = None) -> dict:
    """Everything ``analyze`` reports, as one JSON-ready dict (NaN → None).

    ``blocks``: per block the redundancy summary (``summarize_block``), its spread across samples
    (``sample_spread``) and, where maps are stored, low/mid/high band energy of the features per step.
    ``frequency``: see ``frequency_report``. ``maps_analysis``: an ``analyze_maps`` result to reuse.
    """
    reduction = store.manifest["reduction"]
    name = reduction.get("name", "?")
    images = int(store.manifest["cfg"]["images"])
    notes = []
    spectra: dict[str, np.ndarray] = {}
    if store.has_maps and store.steps_done:
        spectra = feature_spectra(store, cond, maps_analysis)
        detail = [f"pooled to ≤ {reduction['spatial']}×{reduction['spatial']}"] if reduction.get("spatial") else []
        detail += [f"{reduction['channels']} channels"] if reduction.get("channels") else []
        feature_source = f"stored maps (reduction {name!r}{': ' + ', '.join(detail) if detail else ''})"
    else:
        feature_source = None
        notes.append(f"reduction {name!r} stores no feature maps: no feature spectra and no steps × steps matrices "
                     "(record with --reduce full or pool16 for those)")
    blocks = []
    stats = read_stats(store, cond)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # means over no step ≥ 1 are NaN (reported as null)
        for i, block in enumerate(store.blocks):
            cos, rel = stats["cosine"][:, i], stats["rel_l1"][:, i]
            row = {"name": block, **summarize_block(cos, rel, threshold), "spread": sample_spread(cos, rel)}
            row["feature_bands"] = _bands(spectra[block]) if block in spectra else None
            blocks.append(row)
    if not store.complete:
        notes.append(f"incomplete run: {store.steps_done} of {store.manifest['steps']} steps; no final sample")
    frequency = None
    if store.steps_done == 0:
        notes.append("no finished step: nothing to analyse")
    else:
        try:
            frequency = frequency_report(store)
        except (ValueError, KeyError, AttributeError, IndexError) as exc:  # e.g. a scheduler diffusers lacks
            notes.append(f"no predicted-x0 or final-image spectra: {exc}")
    predictability = None
    if store.has_maps and store.steps_done > 1:
        from workbench.analysis.predictability import store_predictability, summary

        predictability = summary(store_predictability(store))
    report = {
        "run": str(store.directory), "model": store.manifest["model"]["id"], "reduction": name,
        "steps": store.steps_done, "timesteps": store.timesteps, "complete": store.complete,
        "threshold": threshold, "samples": images if cond is not None else int(store.manifest["cfg"]["batch"]),
        "cond": cond, "cfg_layout": store.manifest["cfg"]["layout"],
        "sources": {
            "similarity": "streaming statistics (full block outputs, during sampling)",
            "spread": "streaming statistics, across the samples",
            "feature_spectra": feature_source,
            "predicted_x0": "stored denoiser inputs and outputs" if frequency else None,
            "final": "scheduler replayed on the stored inputs" if frequency and frequency["final"] else None,
            "predictability": "stored maps: each step predicted from the steps M, 2M, 3M before it by hold, taylor1 "
                              "and taylor2" if predictability else None,
        },
        "blocks": blocks,
        "frequency": frequency,
        "predictability": predictability,
        "notes": notes,
    }
    return jsonable(report)
