"""Line charts drawn server-side as inline SVG: no charting library, no script, and
the page's CSS colours them (light and dark).  Every value is a number formatted
here, and every label goes through ``markupsafe.escape``."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Line", "line_chart"]

WIDTH, HEIGHT = 420, 160
LEFT, RIGHT, TOP, BOTTOM = 44, 6, 10, 20


@dataclass(frozen=True)
class Line:
    """One series: ``values`` aligned with the chart's times (None: a gap)."""

    label: str
    values: Sequence[float | None]
    css: str  # the stroke's class: line-a, line-b, line-bad


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= top:
            return float(step * power)
    return float(10 * power)


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:g} ms" if value < 1 else f"{value:g} s"
    return f"{value:g}"


def line_chart(
    times: Sequence[float],
    lines: Sequence[Line],
    *,
    title: str,
    unit: str = "",
    threshold: tuple[float, str] | None = None,
    log_from: float | None = None,
) -> Markup:
    """An SVG chart of ``lines`` over ``times`` (unix seconds, evenly spaced), with a
    dashed ``threshold`` line ``(value, label)`` when given; its y axis reaches it.
    With ``log_from`` the y axis is logarithmic from that value (a decade per grid
    line): latencies of milliseconds and a 4 s timeout on one chart."""
    peak = max((v for line in lines for v in line.values if v is not None), default=0.0)
    if threshold is not None:
        peak = max(peak, threshold[0] * 1.1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(len(times) - 1, 1)
    if log_from is not None:
        low = math.log10(log_from)
        high = max(math.ceil(math.log10(max(peak, log_from * 10))), low + 1)
        top = 10.0**high
        ticks = [10.0**d for d in range(math.floor(low), math.floor(high) + 1)]
    else:
        top = _nice(peak)
        ticks = [0.0, top / 2, top]

    def x(i: int) -> float:
        return LEFT + plot_w * i / n

    def y(v: float) -> float:
        if log_from is not None:
            share = (math.log10(min(max(v, log_from), top)) - low) / (high - low)
        else:
            share = min(v, top) / top
        return TOP + plot_h * (1 - share)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in ticks:
        gy = y(tick)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end">'
            f"{escape(_fmt(tick, unit))}</text>"
        )
    if times:
        for i in (0, len(times) // 2, len(times) - 1):
            label = dt.datetime.fromtimestamp(times[i], tz=dt.UTC).strftime("%H:%M")
            anchor = "start" if i == 0 else "end" if i == len(times) - 1 else "middle"
            parts.append(
                f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                f"{label}</text>"
            )
    if threshold is not None:
        ty = y(threshold[0])
        parts.append(
            f'<line class="threshold" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
            f'y1="{ty:.1f}" y2="{ty:.1f}"/>'
        )
        parts.append(
            f'<text class="axis threshold-label" x="{WIDTH - RIGHT - 2}" y="{ty - 4:.1f}" '
            f'text-anchor="end">{escape(threshold[1])}</text>'
        )
    for line in lines:
        runs: list[list[str]] = [[]]
        for i, v in enumerate(line.values):
            if v is None:
                runs.append([])
            else:
                runs[-1].append(f"{x(i):.1f},{y(v):.1f}")
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle class="{line.css} dot" cx="{cx}" cy="{cy}" r="2"/>')
            elif run:
                parts.append(f'<polyline class="{line.css}" points="{" ".join(run)}"/>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key {line.css}">{escape(line.label)}</span>' for line in lines)
    # Safe: every number is formatted here, every text escaped, every class ours.
    return Markup(  # noqa: S704
        f'<figure class="chart-box"><figcaption>{escape(title)}</figcaption>'
        f'{"".join(parts)}<div class="legend">{legend}</div></figure>'
    )
