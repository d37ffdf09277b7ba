"""Line charts of a patient's measurements as inline SVG, drawn on the server.

Inline SVG is markup, not script, so the Content-Security-Policy allows it and the chart needs
no JavaScript. Every chart names itself (``role="img"``, a <title>), has a legend entry per
series with its own line style (colour is not the only cue), axes with values, and keeps its
labels inside the viewBox.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from markupsafe import Markup, escape

__all__ = ["LineChart", "line_chart"]

WIDTH, HEIGHT = 560, 240
PAD_START, PAD_END, PAD_TOP, PAD_BOTTOM = 56, 16, 30, 64
COLOURS = ("#0b5c8e", "#a1122b", "#17603a", "#6b3fa0")  # contrast ≥ 4.5:1 on white
DASHES = ("", "6 4", "2 3", "8 3 2 3")


@dataclass(frozen=True, slots=True)
class LineChart:
    title: str
    unit: str
    series: dict[str, list[tuple[str, float]]]  # name -> (ISO date, value), oldest first
    # horizontal reference lines (a control target: 140 and 90 mmHg), each with its label
    targets: tuple[tuple[str, float], ...] = ()


def _ticks(low: float, high: float, n: int = 4) -> list[float]:
    if high == low:
        return [low]
    step = (high - low) / n
    return [low + i * step for i in range(n + 1)]


def line_chart(chart: LineChart, chart_id: str, label_date: object, label_num: object) -> Markup:
    """The SVG of ``chart``; ``label_date``/``label_num`` write a date or number the viewer's
    way (calendar, digits) as plain text."""
    points = [p for s in chart.series.values() for p in s]
    if not points:
        return Markup("")
    days = [date.fromisoformat(d).toordinal() for d, _ in points]
    values = [v for _, v in points] + [v for _, v in chart.targets]
    d0, d1 = min(days), max(days)
    v0, v1 = min(values), max(values)
    margin = (v1 - v0) * 0.1 or 1.0
    v0, v1 = v0 - margin, v1 + margin
    plot_w = WIDTH - PAD_START - PAD_END
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(day: int) -> float:
        return PAD_START + (0.5 if d1 == d0 else (day - d0) / (d1 - d0)) * plot_w

    def y(value: float) -> float:
        return PAD_TOP + (1 - (value - v0) / (v1 - v0)) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-t" direction="ltr" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-t">{escape(chart.title)}</title>',
    ]
    for tick in _ticks(v0, v1):
        parts.append(
            f'<line x1="{PAD_START}" x2="{WIDTH - PAD_END}" y1="{y(tick):.1f}" '
            f'y2="{y(tick):.1f}" stroke="#cbd2dc"/>'
            f'<text x="{PAD_START - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#1c2430">{escape(label_num(f"{tick:.1f}"))}</text>'  # type: ignore[operator]
        )
    for day in sorted({d0, d1}):
        iso = date.fromordinal(day).isoformat()
        anchor = "start" if day == d0 and d1 != d0 else "end" if d1 != d0 else "middle"
        parts.append(
            f'<text x="{x(day):.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" text-anchor="{anchor}" '
            f'font-size="11" fill="#1c2430">{escape(label_date(iso))}</text>'  # type: ignore[operator]
        )
    for label, value in chart.targets:
        # dashed and labelled at the inline end, so a target is not read as a series
        parts.append(
            f'<line x1="{PAD_START}" x2="{WIDTH - PAD_END}" y1="{y(value):.1f}" '
            f'y2="{y(value):.1f}" stroke="#5b6470" stroke-width="1.5" stroke-dasharray="3 3"/>'
            f'<text x="{WIDTH - PAD_END - 2}" y="{y(value) - 4:.1f}" text-anchor="end" '
            f'font-size="11" fill="#1c2430">{escape(label)}</text>'
        )
    if chart.unit:
        parts.append(
            f'<text x="4" y="14" font-size="11" fill="#1c2430">{escape(chart.unit)}</text>'
        )
    legend_y = HEIGHT - 18
    for n, (name, series) in enumerate(chart.series.items()):
        colour, dash = COLOURS[n % len(COLOURS)], DASHES[n % len(DASHES)]
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{x(date.fromisoformat(d).toordinal()):.1f},{y(v):.1f}"
            for i, (d, v) in enumerate(series)
        )
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash_attr}/>'
        )
        for d, v in series:
            parts.append(
                f'<circle cx="{x(date.fromisoformat(d).toordinal()):.1f}" cy="{y(v):.1f}" r="3" '
                f'fill="{colour}"><title>{escape(label_date(d))}: '  # type: ignore[operator]
                f"{escape(label_num(_fmt(v)))}</title></circle>"  # type: ignore[operator]
            )
        lx = PAD_START + n * 150
        parts.append(
            f'<line x1="{lx}" x2="{lx + 24}" y1="{legend_y}" y2="{legend_y}" stroke="{colour}" '
            f'stroke-width="2"{dash_attr}/>'
            f'<text x="{lx + 30}" y="{legend_y + 4}" font-size="12" fill="#1c2430">'
            f"{escape(name)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
