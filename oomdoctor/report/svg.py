"""The memory timeline of an HTML report, as one inline SVG (no script, no external resource).

`timeline_svg(report)` draws one bar group (`<g class="step">`) per step in `report.steps`: the
step's peak stacked by category with a notch at the step's start, a line through the step ends,
the capacity line when the device has one, byte labels (binary units) on y and step indices on x.
`report.steps` is a window (the first and the latest steps), so where indices jump a gap marker
(`<g class="gap">`) stands for the steps not kept. Every step carries a `<title>` tooltip.
`COLORS` and `STACK` (the category order) are shared with the rest of the HTML report.
"""
from __future__ import annotations

import math
import re
from html import escape

from ..sizes import format_bytes
from .model import Report, Step
from .text import TITLE, clean

COLORS = {
    "parameters": "#4e79a7",
    "gradients": "#b07aa1",
    "optimizer_state": "#e8a33d",
    "activations": "#59a14f",
    "other": "#a0a4a8",
    "unattributed": "#d5d8dc",  # peak bytes no category claimed (estimates, allocator overhead)
}
# Bottom to top: what outlives a step first, activations (freed by backward) last, so a bar reads
# "kept + this step's activations" and the start-of-step notch falls where the activations begin.
STACK = ("parameters", "gradients", "optimizer_state", "other", "activations")
WIDTH, HEIGHT = 1100, 360
LEFT, RIGHT, TOP, BOTTOM = 78, 16, 26, 46
GAP_PX = 30  # a gap marker keeps this width however many steps it stands for
MARKERS_UP_TO = 60  # with more steps, dots would only clutter the end line
# A run keeps 256 steps; a saved file may hold any number: past this the chart draws the first and
# the latest halves (the gap marker stands for the rest), so the page stays small and quick.
MAX_BARS = 1024


def label(nbytes: int | float) -> str:
    """format_bytes without trailing zeros, for axes and legends: `1.5 GiB`, `512 MiB`."""
    text = format_bytes(nbytes)
    return re.sub(r"\.?0+ ", " ", text) if "." in text else text


def legend(report: Report) -> str:
    """HTML legend for the chart: categories, the two lines, the capacity line, estimated bars."""
    items = [_swatch(COLORS[c], c.replace("_", " ")) for c in STACK]
    if any(_unattributed(s) for s in report.steps):
        items.append(_swatch(COLORS["unattributed"], "unattributed"))
    items.append('<span class="key"><i class="sw notch"></i>start of step</span>')
    items.append('<span class="key"><i class="line end"></i>end of step</span>')
    if report.device.capacity_bytes:
        items.append('<span class="key"><i class="line cap"></i>capacity</span>')
    if any(not s.exact for s in report.steps):
        items.append('<span class="key"><i class="sw est"></i>pale: estimated peak (step not watched op by op; '
                     '<code>--exact</code> watches every op)</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


def _swatch(color: str, name: str) -> str:
    return f'<span class="key"><i class="sw" style="background:{color}"></i>{_e(name)}</span>'


def _e(value: object) -> str:
    """A value of the report as SVG text: indices of a saved report are as untrusted as its strings."""
    return escape(clean(value, TITLE))


def chart_steps(steps: list[Step]) -> list[Step]:
    """The steps the chart draws: all of them up to MAX_BARS, else the first and latest halves."""
    return steps if len(steps) <= MAX_BARS else steps[:MAX_BARS // 2] + steps[-MAX_BARS // 2:]


def timeline_svg(report: Report) -> str:
    steps = chart_steps(report.steps)
    capacity = report.device.capacity_bytes
    top = max([s.peak_bytes for s in steps] + [capacity or 0, 1])
    tick = _tick(top)
    ymax = math.ceil(top * 1.06 / tick) * tick
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y(nbytes: int) -> float:
        return TOP + plot_h * (1 - nbytes / ymax)

    slots, gaps, unit = _layout(steps, plot_w)
    # Narrow slots get touching bars: thin gaps between them would only stripe the chart.
    bar = min(unit * 0.72, 56.0) if unit >= 6 else unit
    parts = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="memory per step">']
    parts += _y_axis(ymax, tick, y)
    for x, missing in gaps:
        parts.append(_gap(x, missing, y(ymax), y(0)))
    for step, x in zip(steps, slots):
        parts.append(_bar(step, x, bar, unit, y, report.peak_step))
    parts += _end_line(steps, slots, gaps, y)
    parts += _x_axis(steps, slots, unit, y(0))
    if capacity:
        sim = " (simulated)" if report.device.simulated else ""
        cy = y(capacity)
        parts.append(f'<g class="capacity"><line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{cy:.1f}" y2="{cy:.1f}"/>'
                     f'<text x="{LEFT + 6}" y="{cy - 5:.1f}">'
                     f'capacity {_e(label(capacity))}{sim}</text></g>')
    parts.append("</svg>")
    return "\n".join(parts)


def _tick(top: int) -> int:
    """A power of two giving 4 to 8 ticks: 256 MiB steps read as 0, 256 MiB, 512 MiB, 768 MiB, 1 GiB."""
    tick = 1
    while top / tick > 8:
        tick *= 2
    return tick


def _layout(steps: list[Step], plot_w: int) -> tuple[list[float], list[tuple[float, int]], float]:
    """Centre x of each step, (x, steps missing) of each gap where the indices jump, slot width."""
    jumps = [(i, s.index - p.index - 1) for i, (p, s) in enumerate(zip(steps, steps[1:]), 1)
             if s.index - p.index > 1]
    unit = (plot_w - GAP_PX * len(jumps)) / max(len(steps), 1)
    missing_before = dict(jumps)
    slots, gaps, x = [], [], float(LEFT)
    for i in range(len(steps)):
        if i in missing_before:
            gaps.append((x + GAP_PX / 2, missing_before[i]))
            x += GAP_PX
        slots.append(x + unit / 2)
        x += unit
    return slots, gaps, unit


def _y_axis(ymax: int, tick: int, y) -> list[str]:
    parts = ['<g class="axis y">']
    for value in range(0, ymax + 1, tick):
        yy = y(value)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}"/>'
                     f'<text x="{LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end">{_e(label(value))}</text>')
    parts.append("</g>")
    return parts


def _unattributed(step: Step) -> int:
    return max(0, step.peak_bytes - sum(step.by_category.get(c, 0) for c in STACK))


def _bar(step: Step, x: float, width: float, unit: float, y, peak_step: int | None) -> str:
    segments = [(c, step.by_category.get(c, 0)) for c in STACK] + [("unattributed", _unattributed(step))]
    # A breakdown larger than the peak (rounding, a late gradient read) is scaled to the peak.
    scale = step.peak_bytes / max(sum(v for _, v in segments), 1)
    approx = "" if step.exact else "≈ "
    tip = [f"step {step.index}: peak {approx}{format_bytes(step.peak_bytes)}",
           f"start {format_bytes(step.start_bytes)} · end {format_bytes(step.end_bytes)} · "
           f"{step.duration_s * 1000:.1f} ms"]
    tip += [f"{c.replace('_', ' ')}: {format_bytes(v)}" for c, v in segments if v]
    cls = "step" + (" peak" if step.index == peak_step else "") + ("" if step.exact else " estimated")
    out = [f'<g class="{cls}" data-index="{_e(step.index)}"><title>{_e(chr(10).join(tip))}</title>',
           f'<rect class="hit" x="{x - unit / 2:.2f}" y="{TOP}" width="{unit:.2f}" '
           f'height="{HEIGHT - TOP - BOTTOM}"/>']
    base = 0.0
    for category, value in segments:
        if value <= 0:
            continue
        y0, y1 = y(base), y(base + value * scale)
        out.append(f'<rect x="{x - width / 2:.2f}" y="{y1:.2f}" width="{width:.2f}" height="{y0 - y1:.2f}" '
                   f'fill="{COLORS[category]}"/>')
        base += value * scale
    sy = y(step.start_bytes)
    out.append(f'<line class="start" x1="{x - width / 2:.2f}" x2="{x + width / 2:.2f}" y1="{sy:.2f}" y2="{sy:.2f}"/>')
    if step.index == peak_step:
        py = y(step.peak_bytes)
        out.append(f'<path class="peak-mark" d="M{x:.1f},{py - 3:.1f} l-5,-8 h10 z"/>'
                   f'<text class="peak-label" x="{x:.1f}" y="{py - 14:.1f}" text-anchor="middle">peak</text>')
    out.append("</g>")
    return "".join(out)


def _gap(x: float, missing: int, y_top: float, y_bottom: float) -> str:
    return (f'<g class="gap"><title>{_e(f"{missing:,}")} steps not kept in the report</title>'
            f'<rect x="{x - GAP_PX / 2 + 3:.1f}" y="{y_top:.1f}" width="{GAP_PX - 6}" '
            f'height="{y_bottom - y_top:.1f}"/>'
            f'<text x="{x:.1f}" y="{(y_top + y_bottom) / 2:.1f}" text-anchor="middle" '
            f'transform="rotate(-90 {x:.1f} {(y_top + y_bottom) / 2:.1f})">{_e(f"{missing:,}")} steps not kept</text></g>')


def _end_line(steps: list[Step], slots: list[float], gaps: list[tuple[float, int]], y) -> list[str]:
    """The end-of-step line (what a step leaves behind: a leak is its slope), broken at every gap
    so that it never pretends to cross steps that are not kept."""
    runs: list[list[str]] = [[]]
    previous = None
    for step, x in zip(steps, slots):
        if previous is not None and any(previous < g < x for g, _ in gaps):
            runs.append([])
        runs[-1].append(f"{x:.1f},{y(step.end_bytes):.1f}")
        previous = x
    parts = [f'<polyline class="end" points="{" ".join(run)}"/>' for run in runs if len(run) > 1]
    if len(steps) <= MARKERS_UP_TO:
        parts += [f'<circle class="end" cx="{x:.1f}" cy="{y(s.end_bytes):.1f}" r="2.6"/>' for s, x in zip(steps, slots)]
    return parts


def _x_axis(steps: list[Step], slots: list[float], unit: float, y0: float) -> list[str]:
    """Step indices: the first after every gap and the last always, others every `every` steps."""
    parts = [f'<g class="axis x"><line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y0:.1f}" y2="{y0:.1f}"/>',
             f'<text class="title" x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 6}" '
             f'text-anchor="middle">step</text>']
    every = next(n for n in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**4, 10**5, 10**6, 10**9)
                 if n * unit >= 44 or n == 10**9)
    first = [i for i, s in enumerate(steps) if i == 0 or s.index - steps[i - 1].index > 1]
    must = sorted(set(first + ([len(steps) - 1] if steps else [])))
    chosen = list(must)
    for i, s in enumerate(steps):
        if s.index % every == 0 and all(abs(slots[i] - slots[j]) >= 40 for j in chosen):
            chosen.append(i)
    for i in sorted(chosen):
        parts.append(f'<text x="{slots[i]:.1f}" y="{y0 + 17:.1f}" text-anchor="middle">{_e(steps[i].index)}</text>')
    parts.append("</g>")
    return parts
