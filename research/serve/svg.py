"""Small inline SVG charts for the web view: a line chart, a scatter plot, parallel coordinates.

Drawn as markup on the server: a page needs no charting script, renders without JavaScript,
and the browser's own fonts draw CJK and emoji labels. Every label is escaped; colours and
sizes are presentation attributes, not ``style``, so the page's Content-Security-Policy can
forbid inline styles in the charts as everywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

PALETTE = ("#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#6d4c41", "#ad1457")
WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 22, 30


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]  # (x, y)
    color: str | None = None
    dashed: bool = False
    marks: bool = True  # a dot per point
    line: bool = True  # points joined (False: a scatter)
    labels: list[str] = field(default_factory=list)  # a tooltip per point


def _number(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= step * factor:
            step *= factor
            break
    start = math.ceil(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _span(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.05 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.04
    return low - pad, high + pad


def _finite(points):
    return [(x, y) for x, y in points if isinstance(x, int | float) and isinstance(y, int | float)
            and math.isfinite(x) and math.isfinite(y)]


def _frame(title: str, body: list[str], legend: list[tuple[str, str, bool]], width: float = WIDTH) -> Markup:
    """The chart's ``<svg>``: its title, ``body``, and a legend of (name, colour, dashed) lines at the top right."""
    parts = [f'<svg class="chart" viewBox="0 0 {width:.0f} {HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg">',
             f"<title>{escape(title)}</title>",
             f'<text x="{LEFT}" y="14" font-size="12" font-weight="600" fill="#222">{escape(title)}</text>']
    parts += body
    x = width - RIGHT
    for name, color, dashed in reversed(legend):
        width = 8 + 7 * len(name)
        x -= width + 18
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        parts.append(f'<line x1="{x}" y1="10" x2="{x + 14}" y2="10" stroke="{color}" stroke-width="2"{dash}/>'
                     f'<text x="{x + 18}" y="14" font-size="11" fill="#333">{escape(name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def xy_chart(title: str, series: list[Series], x_label: str = "", y_label: str = "",
             x_names: dict[float, str] | None = None) -> Markup | None:
    """Lines, or dots (``Series(line=False)``). ``x_names`` labels x ticks by name (a
    categorical parameter placed at 0, 1, 2, ...)."""
    drawn = [(s, _finite(s.points)) for s in series]
    drawn = [(s, pts) for s, pts in drawn if pts]
    if not drawn:
        return None
    xs = [x for _, pts in drawn for x, _ in pts]
    ys = [y for _, pts in drawn for _, y in pts]
    x0, x1 = _span(xs)
    y0, y1 = _span(ys)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + (1 - (y - y0) / (y1 - y0)) * plot_h

    body = [f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc"/>']
    for tick in _ticks(y0, y1):
        y = py(tick)
        body.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
                    f'<text x="{LEFT - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end" fill="#555">{_number(tick)}</text>')
    x_ticks = sorted(x_names) if x_names else _ticks(x0, x1, 5)
    for tick in x_ticks:
        x = px(tick)
        text = x_names[tick] if x_names else _number(tick)
        body.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 13}" font-size="10" text-anchor="middle" fill="#555">{escape(text)}</text>')
    if x_label:
        body.append(f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 3}" font-size="11" text-anchor="middle" fill="#333">{escape(x_label)}</text>')
    if y_label:
        body.append(f'<text x="12" y="{TOP + plot_h / 2:.0f}" font-size="11" text-anchor="middle" fill="#333" '
                    f'transform="rotate(-90 12 {TOP + plot_h / 2:.0f})">{escape(y_label)}</text>')
    legend = []
    for index, (s, pts) in enumerate(drawn):
        color = s.color or PALETTE[index % len(PALETTE)]
        if len(drawn) > 1 or s.dashed:
            legend.append((s.name, color, s.dashed))
        if len(pts) > 1 and s.line:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            dash = ' stroke-dasharray="4 3"' if s.dashed else ""
            body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
        if s.marks:
            for i, (x, y) in enumerate(pts):
                tip = s.labels[i] if i < len(s.labels) else f"{_number(x)}, {_number(y)}"
                body.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"><title>{escape(tip)}</title></circle>')
    return _frame(title, body, legend)


def scatter(title: str, points: list[tuple[float, float]], x_label: str, y_label: str,
            labels: list[str] | None = None, x_names: dict[float, str] | None = None) -> Markup | None:
    """Dots only: the objective against one parameter."""
    return xy_chart(title, [Series(y_label, points, line=False, labels=labels or [])], x_label, y_label, x_names=x_names)


def parallel_coordinates(title: str, axes: list[str], rows: list[dict], color_by: str,
                         log_axes: frozenset[str] = frozenset(), labels: list[str] | None = None) -> Markup | None:
    """One polyline per row across vertical axes, coloured by ``color_by`` (the objective)
    from light orange (its lowest) to dark blue (its highest), as the legend shows.
    Numeric axes are linear (``log_axes``: log10); any other axis places its values by name."""
    if not rows or len(axes) < 2:
        return None
    width = max(WIDTH, 90 * len(axes))
    plot_h = HEIGHT - TOP - BOTTOM - 8
    scales: dict[str, tuple] = {}
    for axis in axes:
        values = [row.get(axis) for row in rows]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
        if numbers and len(numbers) == sum(v is not None for v in values):
            transform = (lambda v: math.log10(v)) if axis in log_axes and min(numbers) > 0 else (lambda v: v)
            low, high = _span([transform(v) for v in numbers])
            scales[axis] = ("number", transform, low, high)
        else:
            names = sorted({str(v) for v in values if v is not None})
            scales[axis] = ("names", {n: i for i, n in enumerate(names)}, -0.5, len(names) - 0.5)
    gap = (width - LEFT - RIGHT) / (len(axes) - 1)

    def position(axis: str, value) -> float | None:
        kind, how, low, high = scales[axis]
        if value is None:
            return None
        if kind == "number":
            if not isinstance(value, int | float) or not math.isfinite(value):
                return None
            v = how(value)
        else:
            v = how.get(str(value))
        return TOP + 8 + (1 - (v - low) / (high - low)) * plot_h

    colored = [row.get(color_by) for row in rows]
    numbers = [v for v in colored if isinstance(v, int | float) and math.isfinite(v)]
    c0, c1 = (min(numbers), max(numbers)) if numbers else (0.0, 1.0)
    body = []
    for index, row in enumerate(rows):
        points = []
        for i, axis in enumerate(axes):
            y = position(axis, row.get(axis))
            if y is not None:
                points.append(f"{LEFT + i * gap:.1f},{y:.1f}")
        value = row.get(color_by)
        t = (value - c0) / (c1 - c0) if isinstance(value, int | float) and math.isfinite(value) and c1 > c0 else 0.5
        color = _blend(t) if isinstance(value, int | float) else "#bbb"
        tip = labels[index] if labels and index < len(labels) else ""
        body.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="1.4" '
                    f'stroke-opacity="0.8"><title>{escape(tip)}</title></polyline>')
    for i, axis in enumerate(axes):
        x = LEFT + i * gap
        kind, how, low, high = scales[axis]
        body.append(f'<line x1="{x:.1f}" y1="{TOP + 8}" x2="{x:.1f}" y2="{TOP + 8 + plot_h}" stroke="#888"/>'
                    f'<text x="{x:.1f}" y="{HEIGHT - 6}" font-size="11" text-anchor="middle" fill="#222">{escape(axis)}</text>')
        if kind == "names":
            for name, n in how.items():
                y = TOP + 8 + (1 - (n - low) / (high - low)) * plot_h
                body.append(f'<text x="{x + 4:.1f}" y="{y + 4:.1f}" font-size="10" fill="#555">{escape(name)}</text>')
        else:
            for value in (low, high):
                shown = 10 ** value if axis in log_axes else value
                y = TOP + 8 + (1 - (value - low) / (high - low)) * plot_h
                body.append(f'<text x="{x + 4:.1f}" y="{y + 4:.1f}" font-size="10" fill="#555">{_number(shown)}</text>')
    scale = (f'<text x="{width - RIGHT:.0f}" y="14" font-size="11" text-anchor="end" fill="#333">'
             f'{escape(color_by)}: {_number(c0)} <tspan fill="{_blend(0)}">■</tspan> … '
             f'<tspan fill="{_blend(1)}">■</tspan> {_number(c1)}</text>')
    return _frame(title, [scale, *body], [], width=width)


def _blend(t: float) -> str:
    """Light orange (low) to dark blue (high)."""
    t = min(max(t, 0.0), 1.0)
    low, high = (0xef, 0x9a, 0x3a), (0x0d, 0x3c, 0x8c)
    return "#" + "".join(f"{round(a + (b - a) * t):02x}" for a, b in zip(low, high, strict=True))
