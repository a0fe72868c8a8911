"""Plotly figure builders: pure functions from analysis results to ``go.Figure`` (no Streamlit here).

Time axes show the step index (0 = noisiest) and the timestep; block names are the module paths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

_FONT = dict(size=16)
_THEME_PLACEHOLDER = re.compile(r"^#0000[0-9]{2}$")


def colour_scale(name: str) -> list[list]:
    """Plotly's named colour scale as ``[position, colour]`` pairs, safe under Streamlit's chart theme.

    ``st.plotly_chart``'s theme sends placeholder colours ``#000001``–``#000040`` to the browser, which swaps them
    for theme colours, and Inferno and Magma start at ``#000004``: their zero showed as Streamlit pink (a zero
    difference map read as high error). A colour in that range is moved by one unit of green (``#000104``), which
    nobody can see and the browser leaves alone."""
    import plotly.colors as pc

    return [[pos, "#0001" + c[5:] if _THEME_PLACEHOLDER.match(c) else c] for pos, c in pc.get_colorscale(name)]


def _step_ticks(timesteps: Sequence[int], every: int | None = None) -> dict:
    """At most 8 labelled ticks, each the step on one line and its timestep under it, horizontal (more, or
    rotated ones, ran into each other)."""
    n = len(timesteps)
    every = every or max(1, -(-n // 8))
    idx = list(range(0, n, every))
    return dict(tickmode="array", tickvals=idx, ticktext=[f"{i}<br>t={timesteps[i]}" for i in idx], tickangle=0)


def blocks_steps_heatmap(values: np.ndarray, blocks: Sequence[str], timesteps: Sequence[int],
                         metric: str = "cosine") -> go.Figure:
    """Blocks × steps heatmap of an adjacent-step metric (``values``: [blocks, steps])."""
    fig = go.Figure(go.Heatmap(
        z=values, x=list(range(len(timesteps))), y=list(blocks), colorscale=colour_scale("Viridis"),
        colorbar=dict(title=metric), customdata=np.broadcast_to(np.asarray(timesteps), np.shape(values)),
        hovertemplate="block %{y}<br>step %{x} (t=%{customdata})<br>" + metric + " %{z:.4f}<extra></extra>",
    ))
    fig.update_layout(title=f"Adjacent-step {metric} per block", font=_FONT, xaxis=_step_ticks(timesteps),
                      xaxis_title="step (timestep)", yaxis=dict(autorange="reversed"),
                      height=max(400, 24 * len(blocks)))
    return fig


def predictability_heatmap(error: np.ndarray, blocks: Sequence[str], timesteps: Sequence[int], mode: str,
                           interval: int) -> go.Figure:
    """Blocks × steps heatmap of the relative error of predicting each step from the steps ``interval``, 2·``interval``
    … before it by ``mode`` (``error``: [blocks, steps]; NaN where nothing is that far back). A magnitude: the scale
    starts at zero."""
    z = np.asarray(error, dtype=float)
    top = float(np.nanmax(z)) if np.isfinite(z).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(len(timesteps))), y=list(blocks), colorscale=colour_scale("Viridis"), zmin=0.0,
        zmax=max(top, 1e-9),
        colorbar=dict(title="relative error"), customdata=np.broadcast_to(np.asarray(timesteps), z.shape),
        hovertemplate="block %{y}<br>step %{x} (t=%{customdata})<br>error %{z:.4f}<extra></extra>",
    ))
    fig.update_layout(title=f"Predictability: {mode} from every {interval}. step before (relative L1 error)",
                      font=_FONT, xaxis=_step_ticks(timesteps), xaxis_title="step (timestep)",
                      yaxis=dict(autorange="reversed"), height=max(400, 24 * len(blocks)))
    return fig


def predictability_curves(errors: dict[str, np.ndarray], timesteps: Sequence[int], block: str,
                          interval: int) -> go.Figure:
    """One line per reuse mode: the relative error of predicting each step of ``block`` (``errors``: mode →
    [steps]), log scale, so that hold and the forecasts can be told apart where they differ by orders."""
    fig = go.Figure()
    for mode, values in errors.items():
        fig.add_trace(go.Scatter(x=np.arange(len(timesteps)), y=np.asarray(values, dtype=float), name=mode,
                                 mode="lines+markers", customdata=np.asarray(timesteps),
                                 hovertemplate="step %{x} (t=%{customdata})<br>" + mode + " %{y:.4f}<extra></extra>"))
    fig.update_layout(title=f"{block}: error of predicting a step from every {interval}. step before", font=_FONT,
                      xaxis=_step_ticks(timesteps), xaxis_title="step (timestep)",
                      yaxis_title="relative L1 error", yaxis_type="log")
    return fig


def steps_matrix(matrix: np.ndarray, timesteps: Sequence[int], block: str, metric: str = "cosine") -> go.Figure:
    """Steps × steps similarity matrix of one block (``matrix``: [steps, steps])."""
    fig = go.Figure(go.Heatmap(z=matrix, colorscale=colour_scale("Viridis"), colorbar=dict(title=metric),
                               hovertemplate="step %{y} vs %{x}: %{z:.4f}<extra></extra>"))
    ticks = _step_ticks(timesteps)
    fig.update_layout(title=f"{block}: {metric} between steps", font=_FONT, xaxis=ticks,
                      yaxis=dict(ticks, autorange="reversed"), xaxis_title="step", yaxis_title="step",
                      height=560, width=620)
    return fig


def similarity_curves(curves: dict[str, np.ndarray], timesteps: Sequence[int], metric: str = "cosine") -> go.Figure:
    """One line per block: mean over samples of [steps, batch] values, with a ±1 std band across samples."""
    fig = go.Figure()
    steps = np.arange(len(timesteps))
    for name, values in curves.items():
        v = np.asarray(values, dtype=float)
        mean, std = v.mean(1), v.std(1)
        fig.add_trace(go.Scatter(x=np.r_[steps, steps[::-1]], y=np.r_[mean + std, (mean - std)[::-1]],
                                 fill="toself", opacity=0.2, line=dict(width=0), showlegend=False,
                                 hoverinfo="skip", legendgroup=name))
        fig.add_trace(go.Scatter(x=steps, y=mean, name=name, mode="lines", legendgroup=name))
    fig.update_layout(title=f"Adjacent-step {metric} (band: ±1 std across samples)", font=_FONT,
                      xaxis=_step_ticks(timesteps), xaxis_title="step (timestep)", yaxis_title=metric)
    return fig


def spectra_over_time_figure(spectra: np.ndarray, timesteps: Sequence[int], title: str) -> go.Figure:
    """Radial power spectrum per step (``spectra``: [steps, bins]), log colour scale. Bins without power (above
    the Nyquist frequency of pooled maps) are left blank instead of stretching the scale to log10(0)."""
    power = np.asarray(spectra, dtype=float).T
    z = np.where(power > 0, np.log10(np.where(power > 0, power, 1.0)), np.nan)
    fig = go.Figure(go.Heatmap(z=z, colorscale=colour_scale("Magma"), colorbar=dict(title="log10 power"),
                               hovertemplate="step %{x}<br>frequency %{y}<br>log10 power %{z:.2f}<extra></extra>"))
    fig.update_layout(title=title, font=_FONT, xaxis=_step_ticks(timesteps), xaxis_title="step (timestep)",
                      yaxis_title="radial frequency (cycles / image)")
    return fig


def band_energy_figure(bands: dict[str, np.ndarray], timesteps: Sequence[int], title: str) -> go.Figure:
    """Share of spectral energy in the low / mid / high bands per step (``bands``: name → [steps])."""
    fig = go.Figure()
    steps = list(range(len(timesteps)))
    for name, values in bands.items():
        fig.add_trace(go.Scatter(x=steps, y=np.asarray(values, dtype=float), name=name, mode="lines",
                                 customdata=np.asarray(timesteps),
                                 hovertemplate="step %{x} (t=%{customdata})<br>" + name + " %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, font=_FONT, xaxis=_step_ticks(timesteps), xaxis_title="step (timestep)",
                      yaxis_title="share of energy", yaxis_range=[0, 1])
    return fig


def error_spectra_figure(spectra: dict[str, np.ndarray]) -> go.Figure:
    """Error spectra of several variants against one reference: which frequencies each one loses."""
    fig = go.Figure()
    for name, spec in spectra.items():
        fig.add_trace(go.Scatter(x=np.arange(len(spec)), y=spec, name=name, mode="lines+markers"))
    fig.update_layout(title="Error spectrum vs the full run (same seeds)", font=_FONT, yaxis_type="log",
                      xaxis_title="radial frequency (cycles / image)", yaxis_title="error power")
    return fig


def wrap_title(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (at spaces where it can), joined by ``<br>``."""
    import textwrap

    return "<br>".join(textwrap.wrap(text, width, break_long_words=True) or [""])


def image_grid(images: dict[str, np.ndarray], reference: str | None = None) -> go.Figure:
    """Images side by side (``[H, W, 3]`` floats in [0, 1]); with ``reference``, a row of |diff| maps below.

    The difference maps share one sequential scale that starts at zero (a zero map is the scale's zero colour, and
    equal colours mean equal errors across variants), with a colour bar. Titles are wrapped to their column's
    width so that they never run into each other."""
    names = list(images)
    rows = 2 if reference else 1
    from plotly.subplots import make_subplots

    width = max(8, 72 // max(1, len(names)))  # characters per title line at the default figure width
    titles = [wrap_title(n, width) for n in names] + (
        [wrap_title(f"|{n} − {reference}|", width) for n in names] if reference else [])
    fig = make_subplots(rows=rows, cols=len(names), subplot_titles=titles, vertical_spacing=0.12)
    diffs = {}
    if reference:
        ref = np.clip(np.asarray(images[reference]), 0, 1)
        diffs = {n: np.abs(np.clip(np.asarray(images[n]), 0, 1) - ref).mean(-1) for n in names}
    top = max([float(d.max()) for d in diffs.values()] + [1e-6])
    for j, name in enumerate(names, start=1):
        img = np.clip(np.asarray(images[name]), 0, 1)
        fig.add_trace(go.Image(z=(img * 255).astype(np.uint8)), row=1, col=j)
        if reference:
            fig.add_trace(go.Heatmap(z=diffs[name], colorscale=colour_scale("Inferno"), zmin=0, zmax=top,
                                     showscale=j == len(names),
                                     colorbar=dict(title="|difference|<br>(0–1)", len=0.45, y=0.22)),
                          row=2, col=j)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_annotations(font_size=13)
    fig.update_layout(font=_FONT, height=320 * rows)
    return fig
