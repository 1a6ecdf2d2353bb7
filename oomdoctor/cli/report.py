"""`oomdoctor report`: render a saved JSON report again (on stdout, so `| less` works; `--html`
also as a page), or summarize a memory snapshot (`.pickle` from `--memory-viz`, an OOM, or
`torch.cuda.memory._dump_snapshot`). Whatever the file holds, a bad one is one line and exit 2.
Imports no torch: re-rendering a report must start fast."""
from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..gpu.memviz import load_snapshot, summarize
from ..report.console import print_report, terminal_width
from ..report.html import write_html
from ..report.json import check_writable, load_json
from ..report.text import clean
from ..sizes import format_bytes
from ._app import app


@app.command()
def report(
    path: str = typer.Argument(..., metavar="FILE", help="A report written by --json, or a memory snapshot (.pickle)."),
    html: Optional[str] = typer.Option(None, "--html", metavar="PATH", help="Also write it as HTML."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No report on the terminal."),
) -> int:
    """Render a report saved with `--json` again, or summarize a memory snapshot."""
    if path.endswith((".pickle", ".pkl")):
        _to_stdout(lambda: _snapshot(path))
        return 0
    if html:
        check_writable(html)
    saved = load_json(path)
    if html:
        write_html(saved, html)
    if not quiet:
        _to_stdout(lambda: print_report(saved, file=sys.stdout))
    return 0


def _to_stdout(draw) -> None:
    """Draw on stdout; a reader that quits early (`| head`) ends the output, not with a traceback."""
    try:
        draw()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush is silent too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _snapshot(path: str) -> None:
    name = clean(path, 200)
    s = summarize(load_snapshot(path), name)
    console = Console(file=sys.stdout, width=terminal_width(sys.stdout), highlight=False, markup=False, emoji=False)
    head = Text(name, style="bold")
    head.append(f": {s['source'] or 'memory snapshot'}")
    if s["segments"]:
        head.append(f"\n  {s['segments']:,} segments: reserved {format_bytes(s['reserved_bytes'])}, "
                    f"allocated {format_bytes(s['allocated_bytes'])} when the snapshot was taken")
    if s["events"]:
        head.append(f"\n  trace: {s['events']:,} events, {s['allocations']:,} allocations, {s['frees']:,} frees; "
                    f"peak live {format_bytes(s['peak_live_bytes'])}, live at the end "
                    f"{format_bytes(s['live_in_trace_bytes'])}")
    if not s["segments"] and not s["events"]:
        head.append("\n  no segments and no trace events: nothing was recorded")
    console.print(head)
    if s["top_lines"]:
        console.print(Text("Live at the end of the trace, by the line that allocated it:", style="bold"))
        table = Table(show_edge=False)
        table.add_column(Text("line"))
        table.add_column(Text("bytes"), justify="right")
        for line, nbytes in s["top_lines"]:
            table.add_row(Text(line), Text(format_bytes(nbytes)))
        console.print(table)
    console.print(Text("Open the file at https://pytorch.org/memory_viz for the full timeline."))
