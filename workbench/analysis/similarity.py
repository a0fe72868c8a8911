"""Temporal similarity of block features across sampling steps (PAPER.md, "The observation").

All functions take whole arrays ``[steps, batch, ...]`` (step 0 = noisiest) and are vectorised with torch; nothing
loops over pixels or channels. Relative L1 of step s against step t is Σ|x_s − x_t| / Σ|x_t|, so the adjacent value
at step s compares against the previous step, as the recorder's streaming statistics do.
"""

from __future__ import annotations

import numpy as np
import torch


def _flat(maps: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(maps)
    return x.reshape(x.shape[0], x.shape[1], -1).to(torch.float32)  # [steps, batch, features]


def adjacent_similarity(maps: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """Cosine and relative L1 between each step and the previous one, ``[steps, batch]`` (step 0: NaN)."""
    x = _flat(maps)
    cur, prev = x[1:], x[:-1]
    cos = torch.nn.functional.cosine_similarity(cur, prev, dim=-1, eps=1e-12)
    rel = (cur - prev).abs().sum(-1) / prev.abs().sum(-1).clamp_min(1e-12)
    pad = torch.full((1, x.shape[1]), float("nan"), dtype=x.dtype)
    return {"cosine": torch.cat([pad, cos]).numpy(), "rel_l1": torch.cat([pad, rel]).numpy()}


def similarity_matrix(maps: np.ndarray | torch.Tensor, metric: str = "cosine") -> np.ndarray:
    """Steps × steps matrix per sample, ``[batch, steps, steps]``: entry (s, t) compares step s with step t."""
    x = _flat(maps).transpose(0, 1)  # [batch, steps, features]
    if metric == "cosine":
        unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (unit @ unit.transpose(1, 2)).numpy()
    if metric == "rel_l1":
        dist = torch.cdist(x, x, p=1)  # Σ|x_s − x_t|
        return (dist / x.abs().sum(-1).clamp_min(1e-12)[:, None, :]).numpy()
    raise ValueError(f"unknown metric {metric!r}; use 'cosine' or 'rel_l1'")


def keyframes_for_threshold(rel_l1: np.ndarray, threshold: float) -> list[int]:
    """Steps that would be keyframes if a block recomputed whenever its accumulated relative change since the
    last keyframe exceeded ``threshold`` (step 0 always is). ``rel_l1``: adjacent values ``[steps]`` (step 0 NaN)."""
    keyframes, accumulated = [0], 0.0
    for step in range(1, len(rel_l1)):
        accumulated += float(rel_l1[step])
        if accumulated > threshold:
            keyframes.append(step)
            accumulated = 0.0
    return keyframes


def summarize_block(cosine: np.ndarray, rel_l1: np.ndarray, threshold: float) -> dict:
    """Redundancy summary of one block from adjacent statistics ``[steps, batch]``.

    mean_adjacent_cosine / mean_adjacent_rel_l1: over steps ≥ 1 and samples; spread: standard deviation across
    samples of the per-sample means; keyframes: how many steps the threshold rule would recompute (batch mean curve).
    """
    cos, rel = np.asarray(cosine, dtype=np.float64)[1:], np.asarray(rel_l1, dtype=np.float64)[1:]
    curve = np.concatenate([[np.nan], rel.mean(1)])
    return {
        "mean_adjacent_cosine": float(cos.mean()),
        "mean_adjacent_rel_l1": float(rel.mean()),
        "cosine_spread": float(cos.mean(0).std()),
        "rel_l1_spread": float(rel.mean(0).std()),
        "keyframes": len(keyframes_for_threshold(curve, threshold)),
    }


def summarize_store(store, threshold: float = 0.1, cond: bool | None = True) -> dict:
    """Per-block summaries of a recorded run, from its streaming statistics (so any reduction works)."""
    blocks = []
    for name in store.blocks:
        stats = store.stats(name, cond=cond)
        blocks.append({"name": name, **summarize_block(stats["cosine"], stats["rel_l1"], threshold)})
    return {"run": str(store.directory), "steps": store.steps_done, "timesteps": store.timesteps,
            "complete": store.complete, "threshold": threshold, "blocks": blocks}


def analyze_maps(store, cond: bool | None = True) -> dict[str, dict[str, np.ndarray]]:
    """Everything the similarity and frequency views need, for every block of a run with stored maps:
    adjacent statistics, steps × steps cosine and relative-L1 matrices, and the spectrum of each step."""
    from workbench.analysis.frequency import spectra_over_time

    out = {}
    for name in store.blocks:
        maps = store.features(name, cond=cond)
        entry = adjacent_similarity(maps)
        entry["cosine_matrix"] = similarity_matrix(maps, "cosine")
        entry["rel_l1_matrix"] = similarity_matrix(maps, "rel_l1")
        if maps.ndim == 5:
            entry["spectra"] = spectra_over_time(maps)
        out[name] = entry
    return out
