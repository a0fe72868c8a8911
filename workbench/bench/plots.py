"""Line plots of the benchmark report: PNG drawn with Pillow (so no browser-based image exporter is needed) and the
same plot as interactive HTML (plotly). A series is ``(name, [(x, y, label), ...])``."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}g}" if abs(value) >= 100 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = (hi - lo) or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def line_plot_png(series, path: Path, title: str, xlabel: str, ylabel: str, size=(1100, 640)) -> Path:
    """A line plot (one line with markers per series, legend on the right), drawn with Pillow."""
    w, h = size
    left, right, top, bottom = 80, 330, 50, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    xs = [p[0] for _, pts in series for p in pts]
    ys = [p[1] for _, pts in series for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad_x, pad_y = (x1 - x0) * 0.05 or 0.5, (y1 - y0) * 0.05 or 0.5
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    pw, ph = w - left - right, h - top - bottom

    def px(x, y):
        return left + (x - x0) / (x1 - x0) * pw, top + (1 - (y - y0) / (y1 - y0)) * ph

    d.rectangle([left, top, left + pw, top + ph], outline="black")
    for t in _ticks(x0, x1):
        x, _ = px(t, y0)
        d.line([x, top + ph, x, top + ph + 5], fill="black")
        d.line([x, top, x, top + ph], fill="#eeeeee")
        d.text((x, top + ph + 8), fmt(round(t, 6)), fill="black", font=small, anchor="mt")
    for t in _ticks(y0, y1):
        _, y = px(x0, t)
        d.line([left - 5, y, left, y], fill="black")
        d.line([left, y, left + pw, y], fill="#eeeeee")
        d.text((left - 8, y), fmt(round(t, 6)), fill="black", font=small, anchor="rm")
    d.rectangle([left, top, left + pw, top + ph], outline="black")
    d.text((w / 2 - right / 2, 18), title, fill="black", font=font, anchor="mm")
    d.text((left + pw / 2, h - 18), xlabel, fill="black", font=font, anchor="mm")
    label = Image.new("RGB", (ph, 20), "white")
    ImageDraw.Draw(label).text((ph / 2, 10), ylabel, fill="black", font=font, anchor="mm")
    img.paste(label.rotate(90, expand=True), (8, top))
    for i, (name, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        xy = [px(x, y) for x, y, _ in pts]
        if len(xy) > 1:
            d.line(xy, fill=color, width=2)
        for x, y in xy:
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        ly = top + 6 + i * 20
        d.line([left + pw + 15, ly + 7, left + pw + 40, ly + 7], fill=color, width=3)
        d.text((left + pw + 46, ly), name, fill="black", font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def line_plot_html(series, path: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """The same plot as interactive HTML (plotly; the method name on hover)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, pts in series:
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], text=[p[2] for p in pts],
                                 mode="lines+markers", name=name, hovertemplate="%{text}<br>x=%{x:.3g} y=%{y:.3g}"))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, template="plotly_white")
    fig.write_html(path, include_plotlyjs="cdn")
    return path
