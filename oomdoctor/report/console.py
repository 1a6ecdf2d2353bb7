"""Terminal renderer (rich): the report a user reads when the run ends.

Order: what ran and where, the peak, the step timeline (sparklines and a table of the notable
steps, with a one-line legend for the table and for `~`), the breakdown at the peak, then the
findings ranked by the memory at stake, each with its line, evidence and fix.
Drawn at the terminal's width (`terminal_width`: COLUMNS, else the terminal, else 100 when piped);
long titles, fixes and code wrap, never cut. Every string of the report is `rich.text.Text`
(never markup) passed through `text.clean` (no control characters, long text cut with a marker).
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import IO

from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..distributed.merge import job_total
from ..sizes import format_bytes
from .model import CATEGORIES, Finding, Report, Step, no_findings
from .text import CODE, ITEMS, TEXT, TITLE, clean, more

_BLOCKS = " ▁▂▃▄▅▆▇█"
_COLORS = {"parameters": "blue", "gradients": "magenta", "optimizer_state": "yellow",
           "activations": "green", "other": "white"}
_SEVERITY = {"error": "bold red", "warning": "yellow", "info": "cyan"}
DEFAULT_WIDTH = 100  # when the output is not a terminal and COLUMNS is not set
MIN_WIDTH, MAX_WIDTH = 40, 500
REMEDIES = 10  # per finding


def print_report(report: Report, file: IO[str] | None = None) -> None:
    width = terminal_width(file)
    # markup=False: no string of the report is ever read as rich markup ("[/]" in an argv).
    console = Console(file=file, width=width, highlight=False, markup=False, emoji=False)
    console.print(render(report, width))


def terminal_width(file: IO[str] | None = None) -> int:
    """COLUMNS when set, else the terminal's width, else DEFAULT_WIDTH (a pipe or a file)."""
    columns = os.environ.get("COLUMNS", "").strip()
    if columns.isdigit() and int(columns) > 0:
        return min(max(int(columns), MIN_WIDTH), MAX_WIDTH)
    try:
        stream = file if file is not None else sys.stdout
        if stream.isatty():
            return min(max(os.get_terminal_size(stream.fileno()).columns, MIN_WIDTH), MAX_WIDTH)
    except (AttributeError, OSError, ValueError):  # a StringIO, a closed or odd stream
        pass
    return DEFAULT_WIDTH


def render(report: Report, width: int = DEFAULT_WIDTH) -> Group:
    parts: list = [_header(report)]
    steps = report.steps
    if steps:
        parts += [_timeline(report, width), _notable_steps(report), _notable_legend(report)]
    parts.append(_breakdown(report))
    findings = report.findings_by_stake()
    for i, finding in enumerate(findings[:ITEMS], 1):
        parts.append(_finding(i, finding))
    if len(findings) > ITEMS:
        parts.append(Text(more(ITEMS, len(findings), "findings"), style="dim"))
    if not report.findings:
        parts.append(Text(no_findings(report), style="green" if report.steps_total else "yellow"))
    if report.batch:
        parts.append(_batch(report.batch))
    for note in report.notes[:ITEMS]:
        parts.append(Text(clean(note), style="dim"))
    if len(report.notes) > ITEMS:
        parts.append(Text(more(ITEMS, len(report.notes), "notes"), style="dim"))
    return Group(*parts)


def _header(report: Report) -> Panel:
    d = report.device
    capacity = format_bytes(d.capacity_bytes) if d.capacity_bytes else "unlimited"
    if d.simulated:
        capacity += " (simulated)"
    # A grid, so that a long value wraps under itself, not under the labels.
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column()
    if report.command:
        grid.add_row(Text("command"), Text(clean(shlex.join(map(str, report.command)), TEXT), style="bold"))
    grid.add_row(Text("device"), Text(f"{clean(d.type, TITLE)}: {clean(d.name, TITLE)}, capacity {capacity}"))
    grid.add_row(Text("measured"), Text(clean(_ACCOUNTING.get(report.accounting, report.accounting), TITLE)))
    peak_at = f" at step {report.peak_step}" if report.peak_step is not None else ""
    estimated = report.peak_estimated
    peak = Text(f"{'~' if estimated else ''}{format_bytes(report.peak_bytes)}{peak_at}", style="bold")
    if d.capacity_bytes:
        peak.append(f" ({report.peak_bytes / d.capacity_bytes:.0%} of capacity)")
    if estimated:
        peak.append(f"\n{_TILDE}", style="dim")
    grid.add_row(Text("peak"), peak)
    grid.add_row(Text("steps"), Text(str(report.steps_total)))
    if report.ranks:
        heaviest = max(report.ranks, key=lambda r: r.peak_bytes)
        grid.add_row(Text("ranks"), Text(
            f"{len(report.ranks)}, timeline of rank {heaviest.rank} (highest peak): "
            + ", ".join(f"rank {r.rank} {format_bytes(r.peak_bytes)}" for r in report.ranks[:ITEMS])
            + (" …" if len(report.ranks) > ITEMS else "")))
        job = job_total(report.ranks)  # under FSDP/ZeRO a rank holds shards: the whole model is here
        parts = [f"{c.replace('_', ' ')} {format_bytes(n)}" for c, n in job["peak_by_category"].items() if n]
        grid.add_row(Text("job"), Text(f"{format_bytes(job['peak_bytes'])}, the sum of the ranks' peaks"
                                       + (": " + ", ".join(parts) if parts else "")))
    if report.exit.exception:
        grid.add_row(Text("ended"), Text(clean(report.exit.exception, 1000), style="red"))
    return Panel(grid, title=Text("oomdoctor"), title_align="left")


_TILDE = "~ estimated: this step was not watched op by op (oomdoctor run --exact watches every op)"


_ACCOUNTING = {
    "cuda-allocator": "CUDA caching allocator statistics",
    "ledger": "tensor ledger, every op",
    "ledger-sampled": "tensor ledger, every op on sampled steps; the C heap at forward, backward and optimizer ends on the others (their peaks are estimates)",
}


def sparkline(values: list[int], top: int | None = None) -> str:
    """One character per value, scaled to `top` (default: the largest value)."""
    top = top or max(values, default=0)
    if top <= 0:
        return _BLOCKS[1] * len(values)
    return "".join(_BLOCKS[max(1, min(8, round(8 * v / top)))] for v in values)


def _timeline(report: Report, width: int) -> Text:
    steps = _thin(report.steps, width - 8)
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
    table = Table(title=Text("Notable steps"), title_justify="left", show_edge=False, pad_edge=False)
    for name in ("step", "start", "peak", "end", "Δ end", "time"):
        table.add_column(Text(name), justify="right")
    previous = {s.index: p for p, s in zip(report.steps, report.steps[1:])}
    for step in notable(report.steps, report.peak_step):
        before = previous.get(step.index)
        delta = format_bytes(step.end_bytes - before.end_bytes, signed=True) if before else ""
        style = "bold red" if step.index == report.peak_step else None
        mark = "" if step.exact else "~"
        cells = (str(step.index), format_bytes(step.start_bytes), mark + format_bytes(step.peak_bytes),
                 format_bytes(step.end_bytes), delta, f"{step.duration_s * 1000:.1f} ms")
        table.add_row(*(Text(cell) for cell in cells), style=style)
    return table


def _notable_legend(report: Report) -> Padding:
    """What the table picked and what `~` means, once, right under it."""
    shown = len(notable(report.steps, report.peak_step))
    picked = "every kept step" if shown == len(report.steps) else "first two, peak, largest rises of Δ end, last"
    text = Text(f"Notable steps: {picked}. Δ end: change of end-of-step memory.", style="dim")
    if any(not s.exact for s in report.steps):
        text.append(f"\n{_TILDE}.", style="dim")
    return Padding(text, (0, 0, 0, 2))


def _breakdown(report: Report) -> Table:
    total = sum(report.peak_by_category.get(c, 0) for c in CATEGORIES) or 1
    title = Text("At the peak")
    if report.peak_estimated:
        title.append(" (~ estimated)", style="dim")
    table = Table(title=title, title_justify="left", show_edge=False, show_header=False, pad_edge=False)
    table.add_column("category")
    table.add_column("bytes", justify="right")
    table.add_column("share", justify="right")
    table.add_column("bar")
    for category in CATEGORIES:
        value = report.peak_by_category.get(category, 0)
        share = value / total
        table.add_row(Text(category.replace("_", " ")), Text(format_bytes(value)), Text(f"{share:.0%}"),
                      Text("█" * round(30 * min(share, 1)), style=_COLORS[category]))
    return table


def _finding(number: int, finding: Finding) -> Panel:
    # The title opens the body, not the frame: a frame's title is cut to the width, the body wraps.
    body: list = [Text(clean(finding.title, TITLE), style="bold")]
    if finding.location:
        loc = finding.location
        body.append(Text(f"{clean(loc.file, TITLE)}:{loc.line} in {clean(loc.function, TITLE)}", style="bold"))
        if loc.code:
            body.append(Padding(Text(clean(loc.code, CODE), style="cyan"), (0, 0, 0, 4)))
    body.append(Text(clean(finding.detail)))
    if finding.remedy:
        body.append(Text.assemble(("fix: ", "bold green"), clean(finding.remedy)))
    for remedy in finding.remedies[:REMEDIES]:
        saves = f" (saves {format_bytes(remedy.saves_bytes)})" if remedy.saves_bytes else ""
        body.append(Text.assemble(("  • ", "green"), clean(remedy.title, TITLE), (saves, "bold")))
        if remedy.detail:
            body.append(Padding(Text(clean(remedy.detail), style="dim"), (0, 0, 0, 4)))
        if remedy.before and remedy.after:
            code = f"# before\n{clean(remedy.before, CODE)}\n# after\n{clean(remedy.after, CODE)}"
            body.append(Padding(Syntax(code, "python", theme="ansi_dark", background_color="default", word_wrap=True),
                                (0, 0, 0, 4)))
    if len(finding.remedies) > REMEDIES:
        body.append(Text(f"  {more(REMEDIES, len(finding.remedies), 'remedies')}", style="dim"))
    stake = f" · {format_bytes(finding.bytes)} at stake" if finding.bytes else ""
    title = Text.assemble((f"{number}. {clean(finding.kind, 40)}", _SEVERITY.get(finding.severity, "")), stake)
    return Panel(Group(*body), title=title, title_align="left", border_style=_SEVERITY.get(finding.severity, ""))


def _batch(batch: dict) -> Text:
    text = Text("Batch size: ", style="bold")
    text.append(f"largest that fits {clean(batch.get('max_batch_size'), 40)}, "
                f"recommended {clean(batch.get('recommended_batch_size'), 40)}")
    return text
