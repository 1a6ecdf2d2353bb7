"""`oomdoctor report`: render a saved JSON report again (terminal, HTML)."""
from __future__ import annotations

from typing import Optional

import typer

from ..output import emit
from ..report.json import check_writable, load_json
from ._app import app


@app.command()
def report(
    path: str = typer.Argument(..., metavar="FILE.json", help="A report written by --json."),
    html: Optional[str] = typer.Option(None, "--html", metavar="PATH", help="Also write it as HTML."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No report on the terminal."),
) -> int:
    """Render a report saved with `--json` again."""
    if html:
        check_writable(html)
    saved = load_json(path)
    emit(saved, quiet=quiet, html_path=html)
    return 0
