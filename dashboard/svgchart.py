"""Line charts as one SVG, drawn on the server: what a tab shows while a run trains.

Twenty tabs on one 2-core machine redrawing three Plotly charts every few seconds left the pages seconds
behind the run (docs/scaling.md, "Many tabs on one run"). The Train page shows these SVGs as pictures
(st.image): a browser decodes a picture without building any page elements for it. Names and hover texts
are kept as SVG <title>s (the tests read them; a picture shows no hover).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

W, H = 170, 300  # the viewBox, sized for a third of the Train page's right column (it scales to the column)
LEFT, RIGHT, TOP, BOTTOM = 36, 6, 26, 94  # the plot area's margins (axis labels, title, a legend of four rows)
DASHES = {None: "", "dot": "2,3", "dash": "6,4"}
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


@dataclass(frozen=True)
class Series:
    """One line of a chart: points (x, y), drawn as a line, with markers (each with its hover text) or both."""

    name: str
    xs: tuple[float, ...]
    ys: tuple[float, ...]
    color: str
    dash: str | None = None  # None (solid), "dot" or "dash"
    markers: bool = False
    hover: tuple[str, ...] = ()  # one text per point where markers are drawn


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def drawable(y: float | None, log_y: bool = False) -> bool:
    """Whether a value has a place on the axis (a number, finite, and above 0 on a log axis)."""
    return y is not None and math.isfinite(y) and (y > 0 or not log_y)


def log_range(series: list[Series], x_max: float) -> tuple[float, float]:
    """A log axis's range (log10 values) over the points up to x_max, padded so that a constant (an lr held
    flat) is not drawn on the plot's edge."""
    ys = [y for s in series for x, y in zip(s.xs, s.ys, strict=True) if x <= x_max and drawable(y, True)]
    lo, hi = (math.log10(min(ys)), math.log10(max(ys))) if ys else (-3.0, -1.0)
    pad = max(0.05, 0.1 * (hi - lo))
    return lo - pad, hi + pad


def _label(v: float, log_y: bool) -> str:
    if log_y:
        return "10" + str(round(math.log10(v))).translate(SUPERSCRIPT)
    return f"{v:g}"


def line_chart(title: str, y_title: str, series: list[Series], x_range: tuple[float, float], x_step: float,
               y_range: tuple[float, float] | None = None, log_y: bool = False) -> str:
    """An SVG chart of `series` over x_range (ticks every x_step) and y_range (default: the data's range,
    padded; with log_y a range of log10 values, as Plotly takes it)."""
    x0, x1 = x_range
    if y_range is None and log_y:
        y_range = log_range(series, x1)
    elif y_range is None:
        ys = [y for s in series for x, y in zip(s.xs, s.ys, strict=True) if x0 <= x <= x1 and drawable(y)]
        lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        # a flat line (one point, a constant) still gets an axis of round numbers around it
        pad = max(0.01 * max(abs(lo), abs(hi), 1.0), 0.05 * (hi - lo))
        y_range = (lo - pad, hi + pad)
    y0, y1 = y_range
    if y1 <= y0:
        y1 = y0 + 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + pw * (x - x0) / ((x1 - x0) or 1.0)

    def py(y: float) -> float:
        v = math.log10(y) if log_y else y
        return TOP + ph * (1 - (v - y0) / (y1 - y0))

    out = [f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" role="img" '
           f'font-family="sans-serif" font-size="9" data-chart="{escape(title)}">',
           f'<text x="2" y="14" font-size="12" font-weight="bold">{escape(title)}</text>']
    yticks = ([10.0 ** k for k in range(math.ceil(y0 - 1e-9), math.floor(y1 + 1e-9) + 1)] if log_y
              else nice_ticks(y0, y1))
    for v in yticks:
        y = py(v)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e6e6"/>'
                   f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_label(v, log_y)}</text>')
    n = int((x1 - x0) / x_step + 1e-9)
    for i in range(n + 1):
        v = x0 + i * x_step
        x = px(v)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#f0f0f0"/>'
                   f'<text x="{x:.1f}" y="{TOP + ph + 12}" text-anchor="middle" fill="#555">{v:g}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
               f'<text x="{LEFT + pw / 2:.1f}" y="{TOP + ph + 25}" text-anchor="middle" fill="#555">epoch</text>'
               f'<text transform="translate(9 {TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle" fill="#555">'
               f'{escape(y_title)}</text>')
    out.append(f'<clipPath id="plot"><rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}"/></clipPath>'
               '<g clip-path="url(#plot)">')  # each chart is its own picture: the id need not be page-wide
    for s in series:
        pts = [(px(x), py(y)) for x, y in zip(s.xs, s.ys, strict=True) if drawable(y, log_y)]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="1.4" '
                       f'stroke-dasharray="{DASHES[s.dash]}"><title>{escape(s.name)}</title></polyline>')
        if s.markers:
            for i, (x, y) in enumerate(pts):
                tip = s.hover[i] if i < len(s.hover) else s.name
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{s.color}"><title>{escape(tip)}</title></circle>')
    out.append("</g>")
    for i, s in enumerate(series):  # the legend: one name a row under the axis
        lx, ly = LEFT - 8, TOP + ph + 42 + i * 13
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 3}" y2="{ly - 3}" stroke="{s.color}" stroke-width="2" '
                   f'stroke-dasharray="{DASHES[s.dash]}"/><text x="{lx + 22}" y="{ly}" fill="#333">{escape(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)
