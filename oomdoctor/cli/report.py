"""`oomdoctor report`: render a saved JSON report again (terminal, HTML), or summarize a memory
snapshot (`.pickle` from `--memory-viz`, an OOM, or `torch.cuda.memory._dump_snapshot`)."""
from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..gpu.memviz import load_snapshot, summarize
from ..report.output import emit
from ..report.json import check_writable, load_json
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
        _snapshot(path)
        return 0
    if html:
        check_writable(html)
    saved = load_json(path)
    emit(saved, quiet=quiet, html_path=html)
    return 0


def _snapshot(path: str) -> None:
    summary = summarize(load_snapshot(path))
    console = Console()
    console.print(f"[bold]{path}[/]: {summary['segments']} segments, reserved {format_bytes(summary['reserved_bytes'])}, "
                  f"allocated {format_bytes(summary['allocated_bytes'])}; live at the end of the trace "
                  f"{format_bytes(summary['live_in_trace_bytes'])}")
    table = Table(title="Live memory by the line that allocated it", title_justify="left", show_edge=False)
    table.add_column("line")
    table.add_column("bytes", justify="right")
    for line, nbytes in summary["top_lines"]:
        table.add_row(line, format_bytes(nbytes))
    console.print(table)
    console.print("Open the file at https://pytorch.org/memory_viz for the full timeline.")
