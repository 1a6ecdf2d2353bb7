"""Terminal renderer (rich): the report a user reads when the run ends.

Order: what ran and where, the peak, the step timeline (sparklines and a table of the notable
steps), the breakdown at the peak, then the findings ranked by the memory at stake, each with its
line, evidence and fix.
"""
from __future__ import annotations

import os
from typing import IO

from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..sizes import format_bytes
from .model import CATEGORIES, Finding, Report, Step

_BLOCKS = " ▁▂▃▄▅▆▇█"
_COLORS = {"parameters": "blue", "gradients": "magenta", "optimizer_state": "yellow",
           "activations": "green", "other": "white"}
_SEVERITY = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def print_report(report: Report, file: IO[str] | None = None) -> None:
    console = Console(file=file, width=_width(), highlight=False)
    console.print(render(report))


def render(report: Report) -> Group:
    parts: list = [_header(report)]
    steps = report.steps
    if steps:
        parts += [_timeline(report), _notable_steps(report)]
    parts.append(_breakdown(report))
    for i, finding in enumerate(report.findings_by_stake(), 1):
        parts.append(_finding(i, finding))
    if not report.findings:
        parts.append(Text("No memory problem found.", style="green"))
    if report.batch:
        parts.append(_batch(report.batch))
    for note in report.notes:
        parts.append(Text(note, style="dim"))
    return Group(*parts)


def _width() -> int:
    try:
        return int(os.environ.get("COLUMNS", "")) or 100
    except ValueError:
        return 100


def _header(report: Report) -> Panel:
    d = report.device
    capacity = format_bytes(d.capacity_bytes) if d.capacity_bytes else "unlimited"
    if d.simulated:
        capacity += " (simulated)"
    lines = Text()
    lines.append(f"device    {d.type}: {d.name}, capacity {capacity}\n")
    lines.append(f"measured  {_ACCOUNTING.get(report.accounting, report.accounting)}\n")
    peak_at = f" at step {report.peak_step}" if report.peak_step is not None else ""
    lines.append("peak      ")
    lines.append(f"{format_bytes(report.peak_bytes)}{peak_at}", style="bold")
    if d.capacity_bytes:
        lines.append(f" ({report.peak_bytes / d.capacity_bytes:.0%} of capacity)")
    lines.append(f"\nsteps     {report.steps_total}")
    if report.ranks:
        heaviest = max(report.ranks, key=lambda r: r.peak_bytes)
        lines.append(f"\nranks     {len(report.ranks)}, timeline of rank {heaviest.rank} (highest peak): "
                     + ", ".join(f"rank {r.rank} {format_bytes(r.peak_bytes)}" for r in report.ranks))
    if report.exit.exception:
        lines.append("\nended     ")
        lines.append(report.exit.exception[:300], style="red")
    title = "oomdoctor" + (f" · {' '.join(report.command)}" if report.command else "")
    return Panel(lines, title=title, title_align="left")


_ACCOUNTING = {
    "cuda-allocator": "CUDA caching allocator statistics",
    "ledger": "tensor ledger, every op",
    "ledger-sampled": "tensor ledger (every op on sampled steps; parameters, gradients, optimizer state and saved activations on all)",
}


def sparkline(values: list[int], top: int | None = None) -> str:
    """One character per value, scaled to `top` (default: the largest value)."""
    top = top or max(values, default=0)
    if top <= 0:
        return _BLOCKS[1] * len(values)
    return "".join(_BLOCKS[max(1, min(8, round(8 * v / top)))] for v in values)


def _timeline(report: Report) -> Text:
    steps = _thin(report.steps, _width() - 12)
    top = max(max(s.peak_bytes for s in steps), report.device.capacity_bytes or 0)
    text = Text("Memory per step", style="bold")
    if len(steps) < len(report.steps) or report.steps_total > len(report.steps):
        text.append(f"  (showing {len(steps)} of {report.steps_total} steps)", style="dim")
    text.append("\n  peak ")
    text.append(sparkline([s.peak_bytes for s in steps], top), style="red")
    text.append("\n  end  ")
    text.append(sparkline([s.end_bytes for s in steps], top), style="cyan")
    text.append(f"\n       steps {steps[0].index}..{steps[-1].index}, scale 0..{format_bytes(top)}")
    return text


def _thin(steps: list[Step], width: int) -> list[Step]:
    if len(steps) <= width:
        return steps
    stride = len(steps) / width
    return [steps[int(i * stride)] for i in range(width)]


def notable(steps: list[Step], peak_step: int | None, limit: int = 8) -> list[Step]:
    """First, second, the peak, the largest end-of-step rises, and the last step, in order."""
    if len(steps) <= limit:
        return list(steps)
    chosen = {steps[0].index, steps[1].index, steps[-1].index}
    if peak_step is not None:
        chosen.add(peak_step)
    rises = sorted(range(1, len(steps)), key=lambda i: steps[i].end_bytes - steps[i - 1].end_bytes, reverse=True)
    for i in rises:
        if len(chosen) >= limit:
            break
        chosen.add(steps[i].index)
    return [s for s in steps if s.index in chosen]


def _notable_steps(report: Report) -> Table:
    table = Table(title="Notable steps", title_justify="left", show_edge=False, pad_edge=False)
    for name in ("step", "start", "peak", "end", "Δ end", "time"):
        table.add_column(name, justify="right")
    previous = {s.index: p for p, s in zip(report.steps, report.steps[1:])}
    for step in notable(report.steps, report.peak_step):
        before = previous.get(step.index)
        delta = format_bytes(step.end_bytes - before.end_bytes, signed=True) if before else ""
        style = "bold red" if step.index == report.peak_step else None
        mark = "" if step.exact else "~"
        table.add_row(str(step.index), format_bytes(step.start_bytes), mark + format_bytes(step.peak_bytes),
                      format_bytes(step.end_bytes), delta, f"{step.duration_s * 1000:.1f} ms", style=style)
    return table


def _breakdown(report: Report) -> Table:
    total = sum(report.peak_by_category.get(c, 0) for c in CATEGORIES) or 1
    table = Table(title="At the peak", title_justify="left", show_edge=False, show_header=False, pad_edge=False)
    table.add_column("category")
    table.add_column("bytes", justify="right")
    table.add_column("share", justify="right")
    table.add_column("bar")
    for category in CATEGORIES:
        value = report.peak_by_category.get(category, 0)
        share = value / total
        table.add_row(category.replace("_", " "), format_bytes(value), f"{share:.0%}",
                      Text("█" * round(30 * share), style=_COLORS[category]))
    return table


def _finding(number: int, finding: Finding) -> Panel:
    body: list = []
    if finding.location:
        loc = finding.location
        body.append(Text(f"{loc.file}:{loc.line} in {loc.function}", style="bold"))
        if loc.code:
            body.append(Text(f"    {loc.code}", style="cyan"))
    body.append(Text(finding.detail))
    if finding.remedy:
        body.append(Text.assemble(("fix: ", "bold green"), finding.remedy))
    for remedy in finding.remedies:
        saves = f" (saves {format_bytes(remedy.saves_bytes)})" if remedy.saves_bytes else ""
        body.append(Text.assemble(("  • ", "green"), remedy.title, (saves, "bold")))
        if remedy.detail:
            body.append(Text(f"    {remedy.detail}", style="dim"))
        if remedy.before and remedy.after:
            body.append(Syntax(f"# before\n{remedy.before}\n# after\n{remedy.after}", "python",
                               theme="ansi_dark", background_color="default"))
    stake = f" · {format_bytes(finding.bytes)} at stake" if finding.bytes else ""
    title = Text.assemble((f"{number}. {finding.kind}", _SEVERITY.get(finding.severity, "")),
                          f" · {finding.title}{stake}")
    return Panel(Group(*body), title=title, title_align="left", border_style=_SEVERITY.get(finding.severity))


def _batch(batch: dict) -> Text:
    text = Text("Batch size: ", style="bold")
    text.append(f"largest that fits {batch.get('max_batch_size')}, recommended {batch.get('recommended_batch_size')}")
    return text
