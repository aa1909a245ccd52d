"""Small self-contained SVG charts for the HTML report (no plotting dependency, no scripts).

Histograms of per-image metrics and line charts of a few (x, y) series: enough for a report that
opens anywhere, including offline and in a sandboxed artifact viewer.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np

WIDTH, HEIGHT = 420, 250  # HEIGHT: the plot and its axes; each series adds a legend line below it
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 26, 36
LEGEND_LINE = 14
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _fit(text: str, room: float, font_size: float) -> str:
    """A textLength attribute squeezing `text` into `room` pixels when it would not fit (never cut off)."""
    estimate = 0.6 * font_size * len(text)
    return f' textLength="{room:.0f}" lengthAdjust="spacingAndGlyphs"' if estimate > room else ""


def _frame(title: str, x_range: tuple[float, float], y_range: tuple[float, float], x_label: str,
           y_label: str, log_x: bool = False, legend: list[tuple[str, str]] = ()) -> list[str]:
    """The axes, ticks, labels and title of a chart, with its legend (name, colour) below the x label,
    where it can cover no data and no label can be cut off."""
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = HEIGHT - BOTTOM, TOP
    total = HEIGHT + 6 + LEGEND_LINE * len(legend)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total}" '
             f'viewBox="0 0 {WIDTH} {total}" font-family="sans-serif" font-size="10">',
             f'<text x="{WIDTH / 2}" y="14" text-anchor="middle" font-size="12"{_fit(title, WIDTH - 8, 12)}>'
             f'{html.escape(title)}</text>',
             f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#444"/>',
             f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444"/>']
    for frac in (0.0, 0.5, 1.0):
        xv = x_range[0] + frac * (x_range[1] - x_range[0])
        xv = 10**xv if log_x else xv
        yv = y_range[0] + frac * (y_range[1] - y_range[0])
        anchor = "start" if frac == 0.0 else "end" if frac == 1.0 else "middle"
        parts.append(f'<text x="{x0 + frac * (x1 - x0)}" y="{y0 + 13}" text-anchor="{anchor}">{_fmt(xv)}</text>')
        parts.append(f'<text x="{x0 - 4}" y="{y0 - frac * (y0 - y1) + 3}" text-anchor="end">{_fmt(yv)}</text>')
    parts.append(f'<text x="{(x0 + x1) / 2}" y="{HEIGHT - 8}" text-anchor="middle"{_fit(x_label, x1 - x0, 10)}>'
                 f'{html.escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{(y0 + y1) / 2}" text-anchor="middle"{_fit(y_label, y0 - y1 + 20, 10)} '
                 f'transform="rotate(-90 12 {(y0 + y1) / 2})">{html.escape(y_label)}</text>')
    for k, (name, color) in enumerate(legend):
        y = HEIGHT + 4 + LEGEND_LINE * k
        parts.append(f'<rect x="{x0}" y="{y}" width="10" height="10" fill="{color}" fill-opacity="0.5" '
                     f'stroke="{color}"/><text x="{x0 + 14}" y="{y + 9}">{html.escape(name)}</text>')
    return parts


def _scale(value: float, lo: float, hi: float, a: float, b: float) -> float:
    return a + (value - lo) / (hi - lo or 1.0) * (b - a)


def histogram_svg(series: Mapping[str, Sequence[float]], *, title: str, x_label: str, bins: int = 30,
                  log_x: bool | None = None) -> str:
    """Overlaid histograms (step outlines) of one metric for one or more named series; log_x None
    decides by the range (a log scale when the values span more than two decades)."""
    arrays = {name: np.asarray(v, dtype=np.float64) for name, v in series.items()}
    arrays = {name: a[np.isfinite(a)] for name, a in arrays.items()}
    values = np.concatenate([a for a in arrays.values() if a.size] or [np.zeros(1)])
    if log_x is None:  # values over more than two decades: bins on a log scale, or most fall in one bin
        log_x = bool(values.size) and values.min() > 0 and values.max() > 100 * values.min()
    shown = {name: a for name, a in arrays.items()}
    if log_x:
        arrays = {name: np.log10(a[a > 0]) for name, a in arrays.items()}
        values = np.log10(values[values > 0])
        x_label = f"{x_label} (log scale)"
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = {name: np.histogram(a, bins=edges)[0] for name, a in arrays.items()}
    top = max((int(c.max()) for c in counts.values() if c.size), default=1) or 1
    legend = [(f"{name} (n={shown[name].size}, median "
               f"{_fmt(float(np.median(shown[name])) if shown[name].size else float('nan'))})", COLORS[k % len(COLORS)])
              for k, name in enumerate(counts)]
    parts = _frame(title, (lo, hi), (0, top), x_label, "images", log_x, legend)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    for k, (name, c) in enumerate(counts.items()):
        color = COLORS[k % len(COLORS)]
        points = [f"{x0},{y0}"]
        for i, n in enumerate(c):
            y = _scale(n, 0, top, y0, y1)
            points += [f"{_scale(edges[i], lo, hi, x0, x1):.1f},{y:.1f}",
                       f"{_scale(edges[i + 1], lo, hi, x0, x1):.1f},{y:.1f}"]
        points.append(f"{x1},{y0}")
        parts.append(f'<polyline fill="{color}" fill-opacity="0.15" stroke="{color}" points="{" ".join(points)}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def line_chart_svg(series: Mapping[str, Sequence[tuple[float, float, str]]], *, title: str, x_label: str,
                   y_label: str, log_x: bool = False) -> str:
    """Named series of (x, y, point label) joined by lines, each point labelled (e.g. tau or psi).
    With log_x, x is drawn on a log10 scale (non-positive x are left out)."""
    if log_x:
        series = {name: [(float(np.log10(x)), y, label) for x, y, label in s if x > 0] for name, s in series.items()}
        x_label = f"{x_label} (log scale)"
    points = [(x, y) for s in series.values() for x, y, _ in s if np.isfinite(x) and np.isfinite(y)]
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), min(ys), max(ys)
    pad = 0.05 * ((y_hi - y_lo) or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    legend = [(name, COLORS[k % len(COLORS)]) for k, name in enumerate(series)]
    parts = _frame(title, (x_lo, x_hi), (y_lo, y_hi), x_label, y_label, log_x, legend)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP
    for k, (name, s) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        coords = [(_scale(x, x_lo, x_hi, x0, x1), _scale(y, y_lo, y_hi, y0, y1), label) for x, y, label in s
                  if np.isfinite(x) and np.isfinite(y)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{" ".join(f"{cx:.1f},{cy:.1f}" for cx, cy, _ in coords)}"/>')
        for cx, cy, label in coords:
            parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{color}"/>'
                         f'<text x="{cx + 3:.1f}" y="{cy - 3:.1f}" fill="{color}" font-size="8">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
