"""``bench report``: docs/benchmarks.md and its plots, generated from the suites' JSON files (no number typed by hand).

Reads every ``*.json`` in a folder that has a ``"suite"`` key; writes, next to them, per model of a
``quality-vs-latency`` run a quality-vs-latency plot (one line per method family) as interactive HTML (plotly) and as
PNG (drawn with Pillow, so no browser-based image exporter is needed), and the markdown file. The summary at the top
compares, per model and compute (or latency) budget, the best FRDiff variant with the best other method.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from workbench.bench.plots import fmt, line_plot_html, line_plot_png

BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # fractions of the reference's denoiser FLOPs (or latency)


def load_reports(folder: Path) -> list[tuple[str, dict]]:
    """``(file name, report)`` of every suite JSON in ``folder``, sorted by name. ``SUITE.partial.json`` (what a
    stopped run checkpointed) counts only where no finished ``SUITE.json`` lies beside it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of benchmark JSONs")
    out = []
    for path in sorted(folder.glob("*.json")):
        if path.name.endswith(".partial.json") and (folder / path.name.replace(".partial.json", ".json")).exists():
            continue
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and "suite" in data:
            out.append((path.name, data))
    if not out:
        raise ValueError(f"no benchmark JSON (with a \"suite\" key) in {folder}")
    return out


# ---- numbers --------------------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def families(methods: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for m in methods:
        out.setdefault(m["family"], []).append(m)
    return out


def matched(model: dict, axis: str = "compute_fraction", budgets=BUDGETS) -> list[dict]:
    """Per budget (fraction of the reference), the best FRDiff and the best other method by PSNR among the methods
    at or under it. ``axis``: ``compute_fraction`` (denoiser FLOPs) or ``latency_fraction``."""
    ref_latency = model["reference"]["latency_s"]
    rows = []
    for b in budgets:
        def value(m):
            return m["latency_s"] / ref_latency if axis == "latency_fraction" else m[axis]

        inside = [m for m in model["methods"] if value(m) <= b + 1e-9]
        fr = max((m for m in inside if m["frdiff"]), key=lambda m: m["psnr"], default=None)
        other = max((m for m in inside if not m["frdiff"]), key=lambda m: m["psnr"], default=None)
        if fr is None or other is None:
            continue
        rows.append({"budget": b, "frdiff": fr, "other": other, "delta_psnr": fr["psnr"] - other["psnr"],
                     "frdiff_value": value(fr), "other_value": value(other)})
    return rows


def summary_lines(reports: list[tuple[str, dict]]) -> list[str]:
    """Where FRDiff wins and loses, by how much, per model of every quality-vs-latency run (from the data)."""
    lines = []
    for fname, rep in reports:
        if rep["suite"] != "quality-vs-latency":
            continue
        for model, data in rep["models"].items():
            for axis, word in (("compute_fraction", "denoiser FLOPs"), ("latency_fraction", "latency")):
                rows = matched(data, axis)
                if not rows:
                    continue
                wins = [r for r in rows if r["delta_psnr"] > 0]
                best = max(rows, key=lambda r: r["delta_psnr"])
                worst = min(rows, key=lambda r: r["delta_psnr"])
                won = ", ".join("≤" + format(r["budget"], "g") for r in wins) or "none"
                text = (f"**{model}**, at matched {word} ({rep['machine'].get('device', '?')}, `{fname}`): the best "
                        f"FRDiff variant beats the best other method on PSNR at {len(wins)} of {len(rows)} budgets "
                        f"({won}).")
                if best["delta_psnr"] > 0:
                    text += (f" Largest win: ≤{best['budget']:g} of the reference, {best['frdiff']['name']} "
                             f"{best['frdiff']['psnr']:.2f} dB vs {best['other']['name']} {best['other']['psnr']:.2f} "
                             f"dB (+{best['delta_psnr']:.2f} dB).")
                if worst["delta_psnr"] < 0:
                    text += (f" Largest loss: ≤{worst['budget']:g}, {worst['frdiff']['name']} "
                             f"{worst['frdiff']['psnr']:.2f} dB vs {worst['other']['name']} "
                             f"{worst['other']['psnr']:.2f} dB ({worst['delta_psnr']:.2f} dB).")
                lines.append(text)
    for fname, rep in reports:
        if rep["suite"] != "gpu-speed" or rep.get("small"):
            continue
        for model, data in rep["models"].items():
            graphed = [r for r in rep.get("rows", []) if r["model"] == model
                       and r["mode"] in ("step-graphs", "full-step-graphs") and r["variant"] != "none"
                       and "latency_s" in r]
            for n, mode in sorted({(r["images"], r["mode"]) for r in graphed}):
                mine = [r for r in graphed if (r["images"], r["mode"]) == (n, mode)]
                low = min(mine, key=lambda r: r["measured_over_predicted"])
                top = max(mine, key=lambda r: r["speedup_vs_eager_stock"])
                lines.append(f"**{model}**, {n} image(s), {mode} on {rep['device']} (`{fname}`): FR over "
                             f"stock in the same mode at {low['measured_over_predicted']:.2f}–"
                             f"{max(r['measured_over_predicted'] for r in mine):.2f} of the FLOP prediction; "
                             f"{top['variant']} {top['speedup_vs_eager_stock']:.2f}× eager stock.")
            rows = {r["variant"]: r for r in data["end_to_end"] if not r.get("peer")}
            best = max((r for r in rows.values() if r["variant"] != "none"), key=lambda r: r["speedup"], default=None)
            if best:
                lines.append(f"**{model}** on {rep['device']} ({rep['dtype']}, `{fname}`), eager: a reuse step takes "
                             f"{data['reuse_over_full']:.2f} of a full step (FLOPs predict "
                             f"{data['predicted_reuse_over_full']:.2f}); best 50-step speedup {best['speedup']:.2f}× "
                             f"({best['variant']}), {best['measured_over_predicted']:.2f} of the FLOP prediction.")
    return lines


# ---- plots ----------------------------------------------------------------------------------------------------------
def _series(data: dict, x_key: str, y_key: str) -> list[tuple[str, list[tuple[float, float, str]]]]:
    ref = data["reference"]
    out = []
    if y_key != "psnr":  # against itself the reference sits at the PSNR cap, which would flatten the plot
        out.append(("reference (DDIM)", [(_x(ref, x_key, ref), _y(ref, y_key), ref["name"])]))
    for fam, ms in families(data["methods"]).items():
        pts = sorted((_x(m, x_key, ref), _y(m, y_key), m["name"]) for m in ms if _y(m, y_key) is not None)
        if pts:
            out.append((fam, pts))
    return out


def _x(m: dict, key: str, ref: dict) -> float:
    return m["latency_s"] / ref["latency_s"] if key == "latency_fraction" else m[key]


def _y(m: dict, key: str):
    return m.get(key)


PLOTS = [("psnr-vs-latency", "latency_fraction", "psnr", "latency / reference latency", "PSNR vs reference (dB)"),
         ("psnr-vs-compute", "compute_fraction", "psnr", "denoiser FLOPs / reference", "PSNR vs reference (dB)"),
         ("fd-vs-compute", "compute_fraction", "fd_shapes", "denoiser FLOPs / reference",
          "FD-shapes (lower is better)")]


def quality_plots(fname: str, rep: dict, folder: Path) -> dict[str, list[Path]]:
    """PNG + HTML per model and plot of a quality-vs-latency report; ``{model: [paths]}``."""
    out: dict[str, list[Path]] = {}
    stem = Path(fname).stem
    for model, data in rep["models"].items():
        for name, xk, yk, xl, yl in PLOTS:
            series = _series(data, xk, yk)
            if sum(len(p) for _, p in series) < 2:
                continue
            title = (f"{model}: {yl.split(' (')[0]} vs {xl.split(' /')[0]} ({rep['n']} seeds, "
                     f"{rep['steps']}-step DDIM ref)")
            base = folder / f"{stem}-{model}-{name}"
            out.setdefault(model, []).append(line_plot_png(series, base.with_suffix(".png"), title, xl, yl))
            out[model].append(line_plot_html(series, base.with_suffix(".html"), title, xl, yl))
    return out


# ---- markdown -------------------------------------------------------------------------------------------------------
def _provenance(fname: str, rep: dict, folder_rel: str) -> list[str]:
    mach = rep.get("machine") or {}
    device = mach.get("device") or mach.get("gpu") or rep.get("device") or ("cpu" if not mach.get("cuda") else "?")
    bits = [f"file `{folder_rel}/{fname}`", f"device **{device}**"]
    for key in ("platform", "processor", "cpu", "threads", "cpu_count", "torch", "diffusers", "python"):
        if key in mach:
            bits.append(f"{key} {mach[key]}")
    if "machine" not in rep and "torch" in rep:
        bits.append(f"torch {rep['torch']}")
    for key in ("seeds", "n", "steps", "repeats", "dtype", "small"):
        if key in rep:
            bits.append(f"{key} {fmt(rep[key]) if not isinstance(rep[key], list) else rep[key]}")
    cmd = rep.get("command") or f"python -m workbench bench {rep['suite']} (options not recorded in this JSON)"
    return ["- " + " · ".join(bits), f"- command: `{cmd}`"]


def _quality_section(fname, rep, folder, rel, plots) -> list[str]:
    out = [f"## Quality vs latency (`{fname}`)", ""] + _provenance(fname, rep, rel)
    out += [f"- reference: {rep['steps']}-step DDIM; evaluation seeds {rep['seeds']} (class = seed mod classes); "
            f"Auto-FR and threshold policies learned/recorded on seeds from {rep.get('train_seeds_from')}; FLOPs "
            f"counted with `FlopCounterMode` over whole sampling runs of {rep.get('flop_seeds')} images; latency = "
            f"sampling all {rep['n']} images, batch {rep.get('batch_size')}.", ""]
    for model, data in rep["models"].items():
        ref = data["reference"]
        out += [f"### {model} ({data.get('denoiser', '')})", "",
                f"Reference: {fmt(ref['latency_s'])} s for {rep['n']} images, "
                f"{fmt(ref['flops_per_image'] / 1e9)} GFLOPs per image, class accuracy {fmt(ref['class_accuracy'])}"
                + (f", FD-shapes {fmt(ref['fd_shapes'])}" if "fd_shapes" in ref else "") + ". Auto-FR: "
                f"{data.get('autofr', '–')}.", ""]
        rows = [[m["name"], m["family"], m["steps"], m["scheduler"], m["compute_fraction"],
                 m.get("predicted_compute_fraction"), m["denoiser_calls"], m["latency_s"], m["speedup"], m["psnr"],
                 m["ssim"], m["class_accuracy"], m.get("fd_shapes")] for m in data["methods"]]
        out += [table(["method", "family", "steps", "sched.", "FLOPs / ref", "predicted", "calls", "latency s",
                       "speedup", "PSNR dB", "SSIM", "class acc.", "FD-shapes"], rows), ""]
        for axis, word in (("compute_fraction", "denoiser FLOPs"), ("latency_fraction", "latency")):
            rows = matched(data, axis)
            if rows:
                out += [f"Best by PSNR at matched {word} (budget = fraction of the reference):", "",
                        table(["budget", "best FRDiff", f"its {word}", "PSNR", "best other", f"its {word}", "PSNR",
                               "Δ PSNR dB"],
                              [[f"≤{r['budget']:g}", r["frdiff"]["name"], r["frdiff_value"], r["frdiff"]["psnr"],
                                r["other"]["name"], r["other_value"], r["other"]["psnr"], r["delta_psnr"]]
                               for r in rows]), ""]
        if data.get("not_applicable"):
            out += ["Peers not run on this model:", ""]
            out += [f"- {s['name']}: {s['reason']}" for s in data["not_applicable"]] + [""]
        for p in plots.get(model, []):
            if p.suffix == ".png":
                out += [f"![{p.stem}]({rel}/{p.name}) ([interactive]({rel}/{p.with_suffix('.html').name}))", ""]
    return out


def _schedulers_section(fname, rep, rel) -> list[str]:
    out = [f"## FR under other schedulers (`{fname}`)", ""] + _provenance(fname, rep, rel)
    out += ["- each cell: PSNR (dB) against the full run of the same scheduler and step count, same seeds; "
            "`S/2 steps` is the stock scheduler at half the steps (the fair baseline for multistep solvers, whose "
            "updates combine several past evaluations: reusing ε there is not the same as taking fewer steps).", ""]
    for model, by_steps in rep["models"].items():
        out += [f"### {model}", ""]
        header, rows = None, []
        for n_steps, by_sched in by_steps.items():
            for sched, res in by_sched.items():
                names = [v["name"].replace(f"{sched} {int(n_steps) // 2} steps", "S/2 steps") for v in res["variants"]]
                header = header or ["steps", "scheduler", "ref. class acc."] + names
                rows.append([int(n_steps), sched, res["reference"]["class_accuracy"]]
                            + [v["psnr"] for v in res["variants"]])
        out += [table(header, rows), ""]
        fr_wins = [(r[0], r[1]) for r in rows if header and r[header.index("FR M=2 + mixing")] > r[3]] \
            if header and "FR M=2 + mixing" in header else []
        out += [f"FR M=2 + mixing beats the stock scheduler at half the steps in {len(fr_wins)} of {len(rows)} "
                f"settings: {', '.join(f'{s} {n}' for n, s in fr_wins) or 'none'}.", ""]
        out += _half_steps_lines(header, rows)
    return out


MULTISTEP = ("dpmpp", "unipc")


def _half_steps_lines(header: list | None, rows: list) -> list[str]:
    """Issue 18's second result: per forecast reduced-NFE variant, the multistep settings where it is within 0.5 dB
    of the same solver at half the steps (or above it)."""
    multi = [r for r in rows if r[1] in MULTISTEP]
    out = []
    for name in [h for h in header or [] if h.startswith("reduced NFE M=2, ")]:
        i = header.index(name)
        held = [r for r in multi if r[i] >= r[3] - 0.5]
        worst = min(multi, key=lambda r: r[i] - r[3]) if multi else None
        gap = f"; worst {worst[1]} {worst[0]} steps, {worst[i] - worst[3]:+.2f} dB" if worst else ""
        out.append(f"- {name}: within 0.5 dB of S/2 steps (or above) in {len(held)} of {len(multi)} multistep "
                   f"settings{gap}.")
    return out + [""] if out else []


def _gpu_section(fname, rep, rel) -> list[str]:
    out = [f"## Engine speed on real-size architectures (`{fname}`)", ""] + _provenance(fname, rep, rel) + [""]
    if "timing" not in rep:  # measured before the loop kept the scheduler's timesteps on the CPU and timed calls
        # held the garbage collector off (workbench.bench.engine.TIMING)
        gpu = "cpu" not in str(rep.get("device", "cpu")).lower()
        why = ("the scheduler got GPU timesteps, so each DDIM step waited for the GPU (a host sync), and the garbage "
               "collector could run inside a timed call") if gpu else \
            "the garbage collector could run inside a timed call"
        out += [f"Measured with the earlier timing: {why} (docs/engine.md, \"The sampling loop's host syncs\").", ""]
    if rep.get("partial"):
        out += ["Partial: the run stopped after the rows below (each mode is written when it finishes).", ""]
    models = {**rep["models"], **{r["model"]: None for r in rep.get("rows", []) if r["model"] not in rep["models"]}}
    for model, data in models.items():
        flat = [r for r in rep.get("rows", []) if r["model"] == model]
        if data is None:  # a partial run stopped inside this model's first image count: its finished modes' rows
            out += [f"### {model}", "", *_gpu_rows(flat)]
            continue
        out += [f"### {model} ({fmt(data['parameters'] / 1e6)} M parameters)", "",
                f"Reuse step / full step: measured {fmt(data['reuse_over_full'])}, FLOP prediction "
                f"{fmt(data['predicted_reuse_over_full'])} (full step {fmt(data['full_step_s'] * 1e3)} ms).", ""]
        if data.get("profile"):
            out += _profile_rows(data["profile"])
        if flat:  # one table: every image count, mode, variant and peer of one interleaved run
            out += _gpu_rows(flat)
            continue
        rows = [[r["variant"], r["latency_s"], r["speedup"], r["predicted_speedup"], r.get("measured_over_predicted"),
                 r["predicted_from_step_ratio"], r["denoiser_calls"]] for r in data["end_to_end"]]
        out += [table(["variant (eager)", "latency s", "speedup", "FLOP prediction", "measured / predicted",
                       "from step ratio", "calls"], rows), ""]
        for mode, mode_rows in data.get("modes", {}).items():
            rows = [[r["variant"], r["median_s"], r["speedup_vs_stock_same_mode"], r["predicted_speedup"],
                     r.get("measured_over_predicted"), r["recompiles"], r["warmup_s"],
                     None if r.get("peak_memory_bytes") is None else r["peak_memory_bytes"] / 2**20]
                    for r in mode_rows]
            out += [f"{mode} mode (frdiff compile mode; speedups against stock in the same mode):", "",
                    table([f"variant ({mode})", "median s", "speedup", "FLOP prediction", "measured / predicted",
                           "recompiles", "warm-up s", "peak MiB"], rows), ""]
        comp = data.get("compiled")
        if comp and comp.get("works"):
            rows = [[r["variant"], r["latency_s"], r["speedup"], r["predicted_speedup"],
                     r.get("measured_over_predicted")] for r in comp["end_to_end"]]
            out += [f"Compiled (`torch.compile`): reuse/full {fmt(comp['reuse_over_full'])}.", "",
                    table(["variant (compiled)", "latency s", "speedup", "FLOP prediction", "measured / predicted"],
                          rows), ""]
        elif comp:
            out += [f"Compiled: does not work here: {comp.get('error')}", ""]
    return out


def _profile_rows(prof: dict) -> list[str]:
    """Where a full and a reuse call spend their time, by kind of op (``bench gpu-speed --profile``)."""
    full, reuse = prof["full"], prof["reuse"]
    kinds = [k for k in full if k != "total"] + [k for k in reuse if k not in full] + ["total"]
    rows = [[k, full.get(k, 0.0), reuse.get(k, 0.0), reuse.get(k, 0.0) / full[k] if full.get(k) else None,
             full.get(k, 0.0) / full["total"]] for k in kinds]
    return [f"Time by kind of op, one full and one reuse call ({prof['clock']} time of each op's own work, ms):", "",
            table(["kind of op", "full call", "reuse call", "reuse / full", "share of the full call"], rows), ""]


def with_sampler_time(predicted: float, full_step_s: float, sampler_s: float) -> float:
    """The FLOP prediction with the sampler's own per-step work added: ``sampler_s`` (CFG, the scheduler step, the
    pipeline's Python) is paid at every step, skipped or not, and no reuse removes it; the rest of a full step,
    ``full_step_s − sampler_s``, is the denoiser's, which the FLOP prediction scales. Per step the cost is
    o + r·(t − o) for a step of FLOP ratio r, so S steps cost S·o + (t − o)·S/predicted and the speedup is
    t / (o + (t − o)/predicted)."""
    return full_step_s / (sampler_s + (full_step_s - sampler_s) / predicted)


def _sampler_times(flat: list[dict]) -> dict[tuple, tuple[float, float]]:
    """Per (images, mode): the stock run's in-situ full step and the sampler's per-step time — the median in-situ
    time of a skipped step (the denoiser is not called: what remains is the sampler's work), over the variants that
    skip. Only where the run recorded step times (CUDA events)."""
    import statistics

    out = {}
    for key in {(r["images"], r["mode"]) for r in flat}:
        rows = [r for r in flat if (r["images"], r["mode"]) == key and r.get("step_s_in_run")]
        stock = next((r for r in rows if r["variant"] == "none"), None)
        skips = [r["step_s_in_run"]["skip"] for r in rows if "skip" in r["step_s_in_run"]]
        if stock is not None and "full" in stock["step_s_in_run"] and skips:
            out[key] = (stock["step_s_in_run"]["full"], statistics.median(skips))
    return out


def _gpu_rows(flat: list[dict]) -> list[str]:
    timed = [r for r in flat if "latency_s" in r]
    rows = [[r["images"], r["mode"], r["variant"] + (" (peer)" if r.get("peer") else ""), r["latency_s"],
             r["speedup_vs_stock_same_mode"], r.get("speedup_vs_eager_stock"), r["predicted_speedup"],
             r.get("measured_over_predicted"), r.get("recompiles"), r.get("warmup_s"),
             None if r.get("peak_memory_bytes") is None else r["peak_memory_bytes"] / 2**20] for r in timed]
    out = ["Speedups against stock in the same mode (stock: the no-reuse policy, compiled alike) and against eager "
           "stock at the same image count; warm-up (compiling, capturing) is outside the timed runs.", "",
           table(["images", "mode", "variant", "median s", "speedup (same mode)", "vs eager stock",
                  "FLOP prediction", "measured / predicted", "recompiles", "warm-up s", "peak MiB"], rows), ""]
    out += [f"- {r['variant']} ({r['images']} images, {r['mode']}): does not run here: {r['error']}"
            for r in flat if "error" in r]
    out += [""] if any("error" in r for r in flat) else []
    return out + _sampler_lines(timed)


def _sampler_lines(timed: list[dict]) -> list[str]:
    """The FLOP prediction with the sampler's per-step time added (:func:`with_sampler_time`), per image count and
    mode where the run recorded step times: how much of a shortfall is the sampler's work, which no reuse removes."""
    sampler = _sampler_times(timed)
    rows = []
    for r in timed:
        key = (r["images"], r["mode"])
        if key not in sampler or r.get("peer") or r["variant"] == "none" or not r.get("predicted_speedup"):
            continue
        full, o = sampler[key]
        pred = with_sampler_time(r["predicted_speedup"], full, o)
        rows.append([r["images"], r["mode"], r["variant"], full * 1e3, o * 1e3, r["predicted_speedup"], pred,
                     r["speedup_vs_stock_same_mode"] / r["predicted_speedup"], r["speedup_vs_stock_same_mode"] / pred])
    if not rows:
        return []
    held = sum(row[-1] >= 0.9 for row in rows)
    return ["The sampler's own work per step (CFG, the scheduler step, the pipeline's Python: the in-situ time of a "
            "skipped step, where the denoiser is not called) is paid at every step and is not in the FLOP "
            "prediction; added to it (t / (o + (t − o)/predicted), `with_sampler_time`):", "",
            table(["images", "mode", "variant", "stock step ms (t)", "sampler ms (o)", "FLOP prediction",
                   "with sampler time", "measured / FLOP prediction", "measured / with sampler time"], rows), "",
            f"Measured ≥ 90 % of the prediction with the sampler's time in {held} of {len(rows)} cells.", ""]


def _overhead_rows(rec: dict) -> list[str]:
    rows = []
    for model, r in rec["models"].items():
        for red in ("stats", "pool16", "full"):
            if red in r:
                rows.append([model, red, r["no_hooks_s"], r[red]["sampling_s"], r[red]["overhead"],
                             r[red]["store_bytes"] / 1e6])
    return [table(["model", "reduction", "no hooks s", "recorded s", "overhead", "store MB"], rows), ""]


def _app_rows(app: dict) -> list[str]:
    if "skipped" in app:
        return [f"App start-up: skipped ({app['skipped']}).", ""]
    rows = [[c["label"], c["median"]["first_page_s"], c["median"]["tour_ready_s"], c["median"]["first_result_s"]]
            for c in app["configs"]]
    return [table(["app start-up", "first page s", "Tour ready s", "first result after click s"], rows), ""]


def _overhead_section(fname, rep, rel) -> list[str]:
    suite = rep["suite"]
    out = [f"## Overhead: {suite} (`{fname}`)", ""] + _provenance(fname, rep, rel) + [""]
    if suite == "overhead":
        out += _overhead_rows(rep["record_overhead"])
        a = rep["analysis"]
        out += [f"Analysis of a recorded run ({a['steps']} steps, {a['blocks']} blocks, full maps): "
                f"{fmt(a['median_s'])} s (median).", ""]
        out += _app_rows(rep["app_startup"])
    elif suite == "record-overhead":
        out += _overhead_rows(rep)
    elif suite == "analysis":
        out += [f"Analysis of a recorded run ({rep['steps']} steps, {rep['blocks']} blocks, full maps): "
                f"{fmt(rep['median_s'])} s (median).", ""]
    elif suite == "app-startup":
        out += _app_rows(rep)
    return out


CORE_VARIANTS = ("uniform M=2", "uniform M=2 + mixing", "uniform M=3", "uniform M=3 + mixing")
MODE_ORDER = ("eager", "regional", "full", "wrapped", "cuda-graphs", "step-graphs", "full-step-graphs",
              "peers-compiled")


def _percent(share: float) -> str:
    """A share in whole percent; just under 90 % (the issue's bar), where rounding would lift it there, one decimal
    rounded down (89.95 % is 89.9 %)."""
    return f"{math.floor(1000 * share) / 10:.1f} %" if 0.895 <= share < 0.9 else f"{100 * share:.0f} %"


def execution_modes_table(reports: list[tuple[str, dict]]) -> list[str]:
    """One table over every full-size ``gpu-speed`` file: per card, model, image count and execution mode, stock's
    median and FR's core variants over stock in the same mode with their share of the FLOP prediction (each row is
    one interleaved run; rows of different files are different runs)."""
    rows = []
    for fname, rep in reports:
        if rep["suite"] != "gpu-speed" or rep.get("small"):
            continue
        timed = [r for r in rep.get("rows", []) if "latency_s" in r and not r.get("peer")]
        for model, n, mode in sorted({(r["model"], r["images"], r["mode"]) for r in timed},
                                     key=lambda k: (k[0], k[1], MODE_ORDER.index(k[2]) if k[2] in MODE_ORDER else 99)):
            mine = {r["variant"]: r for r in timed if (r["model"], r["images"], r["mode"]) == (model, n, mode)}
            stock = mine.get("none")
            cells, held = [], 0
            for v in CORE_VARIANTS:
                r = mine.get(v)
                share = None if r is None or not r.get("predicted_speedup") else \
                    r["speedup_vs_stock_same_mode"] / r["predicted_speedup"]
                held += share is not None and share >= 0.9
                cells.append("–" if share is None else f"{r['speedup_vs_stock_same_mode']:.2f}× ({_percent(share)})")
            found = sum(v in mine for v in CORE_VARIANTS)
            eager = f" ({stock['speedup_vs_eager_stock']:.1f}× eager)" \
                if stock and mode != "eager" and stock.get("speedup_vs_eager_stock") else ""
            rows.append([rep.get("device", "?"), model, n, mode,
                         "–" if stock is None else f"{stock['latency_s']:.3f} s{eager}", *cells,
                         f"{held} of {found}" if found else "–",
                         f"`{fname}`" + ("" if "timing" in rep else " (earlier timing)")])
    if not rows:
        return []
    return ["### FR in each execution mode (every full-size `gpu-speed` file)", "",
            "Stock's median 50-step latency (and its speedup over eager stock in the same run), then each FR variant's "
            "speedup over stock **in the same mode** with its share of the FLOP prediction; \"≥ 90 %\" counts the "
            "variants at or above 90 % of it. Each row is one interleaved run: compare within a row, or rows of one "
            "file; rows of different files ran on different machines or days.", "",
            table(["card", "model", "images", "mode", "stock", *[v.replace("uniform ", "FR ") for v in CORE_VARIANTS],
                   "≥ 90 %", "file"], rows), ""]


ORDER = {"quality-vs-latency": 0, "schedulers": 1, "gpu-speed": 2, "overhead": 3, "record-overhead": 4,
         "analysis": 5, "app-startup": 6}


NOTES_START, NOTES_END = "<!-- reading: hand-written, kept by bench report -->", "<!-- reading end -->"


def _kept_notes(markdown: Path) -> str:
    """The hand-written reading of the results between the notes markers of an existing report (kept on rewrite;
    it interprets the generated tables and quotes no number of its own)."""
    if not markdown.is_file():
        return ""
    text = markdown.read_text()
    if NOTES_START not in text or NOTES_END not in text:
        return ""
    return text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0].strip("\n")


def write_report(folder: Path, markdown: Path) -> dict:
    """Plots into ``folder`` and the markdown at ``markdown`` from the JSONs in ``folder``; a hand-written reading
    between the notes markers of an existing ``markdown`` is kept, after the summary."""
    import os

    folder, markdown = Path(folder), Path(markdown)
    reports = load_reports(folder)
    rel = os.path.relpath(folder, markdown.parent).replace(os.sep, "/")
    lines = ["# Benchmarks", "",
             f"Generated by `python -m workbench bench report --from {folder.as_posix()} --out {markdown.as_posix()}` "
             "from the JSON files each suite wrote; every number below comes from those files, each produced by the "
             "command shown with it. Do not edit by hand: re-run the suites (`python -m workbench bench all --out "
             "DIR`) and this command.", "", "## Summary", ""]
    summary = summary_lines(reports)
    lines += [f"- {s}" for s in summary] or ["- no quality-vs-latency or full-size gpu-speed results yet."]
    lines.append("")
    lines += execution_modes_table(reports)
    notes = _kept_notes(markdown)
    if notes:
        lines += [NOTES_START, notes, NOTES_END, ""]
    plots_written: list[str] = []
    other = []
    for fname, rep in sorted(reports, key=lambda r: (ORDER.get(r[1]["suite"], 9), r[0])):
        suite = rep["suite"]
        if suite == "quality-vs-latency":
            plots = quality_plots(fname, rep, folder)
            plots_written += [str(p) for ps in plots.values() for p in ps]
            lines += _quality_section(fname, rep, folder, rel, plots)
        elif suite == "schedulers":
            lines += _schedulers_section(fname, rep, rel)
        elif suite == "gpu-speed":
            lines += _gpu_section(fname, rep, rel)
        elif suite in ("overhead", "record-overhead", "analysis", "app-startup"):
            lines += _overhead_section(fname, rep, rel)
        else:
            other.append(f"- `{rel}/{fname}`: suite `{suite}` (see its own page in docs/)")
    if other:
        lines += ["## Other results in the folder", ""] + other + [""]
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n".join(lines).rstrip() + "\n")
    return {"markdown": str(markdown), "plots": plots_written, "suites": [f for f, _ in reports],
            "summary": summary}
