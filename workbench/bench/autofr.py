"""``bench autofr``: does a learned keyframe policy beat the hand-made ones at equal compute?

Per shipped model: the front of hand-made policies (``uniform`` M = 2, 3, 4 with and without score mixing, and
``reduced-nfe`` M = 2, 3, 4) and Auto-FR policies (per-step and per-block gates; feature reuse at a model-specific
compute target, and whole-block reuse at 0.5) trained on seeds 0–31, all measured on held-out seeds 100–163 against
the full 50-step DDIM run from the same noise, in one :func:`workbench.compare.compare` call (the engine,
:func:`frdiff.apply`). Compute fraction = Σ step costs / steps from measured FLOPs (1 = the full run).

Each Auto-FR row gets a verdict against the front:

- ``above``: its PSNR is higher than the front's upper envelope (linear between front points, the best PSNR any mix of
  two hand-made policies could reach on average) at its compute fraction;
- ``not dominated``: below that envelope, but no single front policy has both ≤ its compute and ≥ its PSNR;
- ``below``: some front policy is at least as cheap and at least as good.

``render_markdown`` turns the JSON into the tables of ``docs/autofr.md`` (``python -m workbench.bench.autofr JSON…
--md docs/autofr.md`` rewrites the part between the markers, merging one JSON per model), so no number there is
typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

TARGETS = {"tiny-unet": 0.6, "tiny-dit": 0.75}  # feature reuse: between uniform M=3 and M=4 on each model
BLOCK_TARGET = 0.5  # whole-block reuse: reduced-NFE M=2's cost
# (gates, granularity, target compute (None: the model's feature-reuse target), reuse mode)
AUTOFR_RUNS = [("step", "feature", None, "hold"), ("block", "feature", None, "hold"),
               ("step", "block", BLOCK_TARGET, "hold"), ("block", "block", BLOCK_TARGET, "hold"),
               ("step", "block", BLOCK_TARGET, "taylor2"), ("block", "block", BLOCK_TARGET, "taylor2")]
MARK_START, MARK_END = "<!-- bench-autofr:start -->", "<!-- bench-autofr:end -->"


def _envelope(front: list[tuple[float, float]], compute: float) -> float | None:
    """Upper envelope (concave hull from above) of front points (compute, psnr), linearly interpolated at
    ``compute``; None outside the front's compute range."""
    pts = sorted(front)
    hull: list[tuple[float, float]] = []
    for p in pts:  # monotone chain, upper hull
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) >= 0:
            hull.pop()
        hull.append(p)
    if not hull or compute < hull[0][0] or compute > hull[-1][0]:
        return None
    best = max(p for c, p in hull if c <= compute)  # a cheaper policy is also available at this compute
    for (c0, p0), (c1, p1) in zip(hull, hull[1:], strict=False):
        if c0 <= compute <= c1:
            best = max(best, p0 + (p1 - p0) * (compute - c0) / (c1 - c0) if c1 > c0 else max(p0, p1))
    return best


def verdict(row: dict, front: list[dict], tol: float = 1e-9) -> dict:
    """How an Auto-FR row stands against the hand-made front (see the module docstring)."""
    pts = [(f["compute_fraction"], f["psnr"]) for f in front]
    dominators = [f["name"] for f in front
                  if f["compute_fraction"] <= row["compute_fraction"] + tol and f["psnr"] >= row["psnr"]]
    cheaper = [f for f in front if f["compute_fraction"] <= row["compute_fraction"] + tol]
    best_cheaper = max(cheaper, key=lambda f: f["psnr"]) if cheaper else None
    env = _envelope(pts, row["compute_fraction"])
    if env is not None and row["psnr"] > env:
        kind = "above"
    elif not dominators:
        kind = "not dominated"
    else:
        kind = "below"
    return {"verdict": kind, "envelope_psnr": env, "margin_db": None if env is None else row["psnr"] - env,
            "dominated_by": dominators,
            "best_cheaper": None if best_cheaper is None else {k: best_cheaper[k] for k in
                                                               ("name", "compute_fraction", "psnr")}}


def bench_autofr(repeats: int = 1, models: tuple[str, ...] = ("tiny-unet", "tiny-dit"), steps: int = 50,
                 train_seeds: list[int] | None = None, val_seeds: list[int] | None = None, iterations: int = 30,
                 runs: list[tuple[str, str, float | None, str]] | None = None, targets: dict | None = None,
                 device: str | None = None, progress=None) -> dict:
    """Hand-made front and Auto-FR policies on held-out seeds (see the module docstring)."""
    import frdiff
    from frdiff.autofr import AutoFRConfig
    from workbench.autofr import BASELINES, learn_for_pipeline, mask_lines, seed_ranges
    from workbench.bench.common import machine_info
    from workbench.compare import Variant, compare, measure_savings
    from workbench.models.zoo import load_pipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_seeds = list(range(32)) if train_seeds is None else list(train_seeds)
    val_seeds = list(range(100, 164)) if val_seeds is None else list(val_seeds)
    if set(train_seeds) & set(val_seeds):
        raise ValueError("validation seeds must be held out from the training seeds")
    runs = AUTOFR_RUNS if runs is None else runs
    targets = {**TARGETS, **(targets or {})}
    report = {"suite": "autofr", "machine": machine_info(), "device": device, "steps": steps,
              "train_seeds": seed_ranges(train_seeds), "val_seeds": seed_ranges(val_seeds), "iterations": iterations,
              "repeats": repeats, "models": {}}
    for name in models:
        pipe = load_pipeline(name, device=device)
        pipe.set_progress_bar_config(disable=True)
        den = frdiff.denoiser_of(pipe)
        savings = measure_savings(pipe)
        variants, trained = [], {}
        for preset, m, mix in BASELINES:
            label = f"{preset} M={m}" + (" + mixing" if mix else "")
            variants.append(Variant(label, frdiff.make_preset(preset, den, steps, interval=m, mix=mix)))
        for gates, granularity, target, reuse in runs:
            target = targets.get(name, 0.6) if target is None else target
            label = f"autofr {gates} gates, {granularity} reuse, target {target:g}" + (
                f", {reuse}" if reuse != "hold" else "")
            cfg = AutoFRConfig(gates=gates, granularity=granularity, reuse=reuse, target_compute=target,
                               iterations=iterations)
            res = learn_for_pipeline(pipe, cfg, steps, train_seeds, None, None, savings, model_name=name)
            variants.append(Variant(label, res.policy))
            trained[label] = {"gates": gates, "granularity": granularity, "reuse": reuse, "target": target,
                              "train_seconds": res.seconds,
                              "iterations_run": len(res.history), "final_mse": res.history[-1]["mse"]
                              if res.history else None, **mask_lines(res.policy),
                              "policy": res.policy.to_dict()}
            if progress is not None:
                progress({"model": name, "trained": label, "seconds": res.seconds})
        labels = [s % pipe.num_classes for s in val_seeds]
        t0 = time.perf_counter()
        result = compare(pipe, variants, labels, val_seeds, steps=steps, scheduler=None, repeats=repeats,
                         progress=progress)
        keys = ("name", "psnr", "ssim", "class_accuracy", "fd_shapes", "predicted_speedup", "speedup", "latency_s",
                "denoiser_calls")
        rows = []
        for v in result["variants"]:
            row = {k: v[k] for k in keys if k in v}
            row["compute_fraction"] = 1.0 / v["predicted_speedup"]
            row["autofr"] = v["name"] in trained
            if row["autofr"]:
                row.update(trained[v["name"]])
            rows.append(row)
        front = [r for r in rows if not r["autofr"]]
        for r in rows:
            if r["autofr"]:
                r.update(verdict(r, front))
        ref = result["reference"]
        report["models"][name] = {"reference": {k: ref[k] for k in ("latency_s", "class_accuracy", "fd_shapes")
                                                if k in ref},
                                  "measure_seconds": time.perf_counter() - t0, "rows": rows}
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
    return report


# ---- docs ------------------------------------------------------------------------------------------------------------
def render_markdown(report: dict, source: str = "") -> str:
    """The results part of docs/autofr.md from a ``bench autofr`` JSON."""
    def where(m: dict) -> str:
        versions = f"torch {m['torch']}, diffusers {m['diffusers']}"
        if m.get("gpu"):
            return f"{m['gpu']} ({versions})"
        threads = m.get("threads")
        return f"the CPU ({m.get('processor') or 'cpu'}, {threads} thread{'s' * (threads != 1)}, {versions})"

    machines = {name: where(entry.get("machine", report["machine"])) for name, entry in report["models"].items()}
    shared = len(set(machines.values())) == 1
    on = next(iter(machines.values())) if shared else "the machine named under each model"
    lines = [f"Measured by `python -m workbench bench autofr --out DIR` on {on}"
             f"{f', raw JSON {source}' if source else ''}. {report['steps']}-step DDIM, "
             f"Auto-FR trained on seeds {report['train_seeds']} ({report['iterations']} iterations of 2 images), "
             f"every row measured on held-out seeds {report['val_seeds']} against the full run from the same noise. "
             "Compute = Σ step costs / steps from measured FLOPs.", ""]
    for name, entry in report["models"].items():
        ref = entry["reference"]
        lines += [f"### {name}", ""] + ([] if shared else [f"Measured on {machines[name]}.", ""]) + [
                  f"Full run: class accuracy {ref['class_accuracy']:.3f}"
                  + (f", FD-shapes {ref['fd_shapes']:.2f}" if "fd_shapes" in ref else "") + ".", "",
                  "| policy | compute | PSNR (dB) | SSIM | class acc. | FD-shapes | vs front |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in sorted(entry["rows"], key=lambda r: r["compute_fraction"]):
            vs = ""
            if r["autofr"]:
                env = r["envelope_psnr"]
                vs = r["verdict"] + ("" if env is None else f" (envelope {env:.2f} dB, {r['margin_db']:+.2f})")
                if r["dominated_by"]:
                    best = r["best_cheaper"]
                    vs += (f"; {len(r['dominated_by'])} front policies dominate it, best {best['name']} "
                           f"({best['compute_fraction']:.3f}, {best['psnr']:.2f} dB)")
            name_cell = f"**{r['name']}**" if r["autofr"] else r["name"]
            fd = f"{r['fd_shapes']:.2f}" if "fd_shapes" in r else "–"
            lines.append(f"| {name_cell} | {r['compute_fraction']:.3f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                         f"{r['class_accuracy']:.3f} | {fd} | {vs} |")
        lines += ["", "Auto-FR masks (one character per step: K all blocks computed, . all reusing, digit d = at "
                  "least d tenths of the blocks computed) and training time:", "",
                  "| policy | mask | train s |", "| --- | --- | --- |"]
        for r in entry["rows"]:
            if r["autofr"]:
                lines.append(f"| {r['name']} | `{r['step_mask']}` | {r['train_seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def merge_reports(reports: list[dict]) -> dict:
    """One report from several ``bench autofr`` runs with the same settings (e.g. one model per GPU)."""
    merged = {**reports[0], "models": {}}
    for rep in reports:
        for key in ("steps", "train_seeds", "val_seeds", "iterations"):
            if rep[key] != merged[key]:
                raise ValueError(f"cannot merge runs with different {key}: {merged[key]!r} and {rep[key]!r}")
        merged["models"].update({name: {**entry, "machine": rep["machine"]} for name, entry in rep["models"].items()})
    return merged


def write_markdown(json_paths: list[str | Path] | str | Path, md_path: str | Path) -> dict:
    """Replace the text between the markers in ``md_path`` with :func:`render_markdown` of the (merged) JSONs;
    returns the merged report."""
    paths = [json_paths] if isinstance(json_paths, (str, Path)) else list(json_paths)
    report = merge_reports([json.loads(Path(p).read_text()) for p in paths])
    md = Path(md_path).read_text()
    if MARK_START not in md or MARK_END not in md:
        raise ValueError(f"{md_path} has no {MARK_START} … {MARK_END} markers")
    head, rest = md.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    source = ", ".join(f"`{p}`" for p in paths)
    Path(md_path).write_text(head + MARK_START + "\n" + render_markdown(report, source) + "\n" + MARK_END + tail)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workbench.bench.autofr",
                                description="rewrite the results part of docs/autofr.md from bench autofr JSONs")
    p.add_argument("json", nargs="+", help="bench autofr JSON(s); several are merged (one model each)")
    p.add_argument("--md", required=True, help="markdown file with the bench-autofr markers")
    p.add_argument("--merged", default=None, help="also write the merged JSON here")
    args = p.parse_args(argv)
    try:
        report = write_markdown(args.json, args.md)
        if args.merged:
            Path(args.merged).write_text(json.dumps(report, indent=1) + "\n")
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
