"""A small line chart as inline SVG, drawn here (no chart library, no script, nothing from elsewhere).

The chart is an image with a name (``role="img"`` and a ``<title>``), scales to the width of its box
(a 360 px phone included), and marks the lowest and highest value and the time span. Colours are
attributes, not CSS, so the page's content security policy (no inline styles) holds. A gap of more
than two buckets between points breaks the line: a sensor that was silent is not drawn as steady.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 320, 120
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 8, 10, 22
LINE = "#0b4f8a"
TEXT = "#1b1f24"
GRID = "#8a949e"


@dataclass
class Series:
    label: str
    points: list[tuple[int, float]]  # (epoch ms, value), in time order


def _num(v: float) -> str:
    """A short label: 1234 → "1234", 12.345 → "12.3"."""
    if abs(v) >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.1f}"


def line_chart(series: list[Series], *, title: str, unit: str | None, start_ms: int, end_ms: int,
               gap_ms: int = 90 * 60 * 1000, number: Callable[[float], str] = _num) -> Markup:
    """``number`` writes the axis values (the page passes its locale's style: ``132,5`` in Vietnamese)."""
    values = [v for s in series for _, v in s.points]
    label = f"{title} ({unit})" if unit else title
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(label)}" '
             f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMidYMid meet">',
             f"<title>{escape(label)}</title>"]
    x0, x1 = PAD_LEFT, WIDTH - PAD_RIGHT
    y0, y1 = PAD_TOP, HEIGHT - PAD_BOTTOM
    parts.append(f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="{GRID}" stroke-width="1"/>')
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="{GRID}" stroke-width="1"/>')
    parts.append(f'<text x="{x0}" y="{HEIGHT - 6}" font-size="10" fill="{TEXT}">−24 h</text>')
    parts.append(f'<text x="{x1}" y="{HEIGHT - 6}" font-size="10" fill="{TEXT}" text-anchor="end">0</text>')
    if values:
        lo, hi = min(values), max(values)
        if hi == lo:
            lo, hi = lo - 1, hi + 1
        span_t = max(1, end_ms - start_ms)

        def xy(t: int, v: float) -> tuple[float, float]:
            x = x0 + (x1 - x0) * (min(max(t, start_ms), end_ms) - start_ms) / span_t
            y = y1 - (y1 - y0) * (v - lo) / (hi - lo)
            return round(x, 1), round(y, 1)

        suffix = f" {unit}" if unit else ""
        parts.append(f'<text x="{x0 - 4}" y="{y0 + 8}" font-size="10" fill="{TEXT}" text-anchor="end">'
                     f"{escape(number(hi))}</text>")
        parts.append(f'<text x="{x0 - 4}" y="{y1}" font-size="10" fill="{TEXT}" text-anchor="end">'
                     f"{escape(number(lo))}</text>")
        parts.append(f'<text x="{x0 + 4}" y="{y0 + 8}" font-size="10" fill="{TEXT}">{escape(suffix.strip())}</text>')
        for s in series:
            runs: list[list[tuple[float, float]]] = []
            last_t: int | None = None
            for t, v in s.points:
                if last_t is None or t - last_t > gap_ms:
                    runs.append([])
                runs[-1].append(xy(t, v))
                last_t = t
            for run in runs:
                if len(run) == 1:
                    cx, cy = run[0]
                    parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{LINE}"/>')
                else:
                    pts = " ".join(f"{x},{y}" for x, y in run)
                    parts.append(f'<polyline points="{pts}" fill="none" stroke="{LINE}" stroke-width="2"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
