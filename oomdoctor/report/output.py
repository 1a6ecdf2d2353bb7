"""Where a finished report goes: the terminal (stderr, so the script's stdout stays its own),
a JSON file, an HTML file. Shared by the CLI, the decorator and the context manager."""
from __future__ import annotations

import sys

from ..errors import OomdoctorError
from .model import Report


def emit(report: Report, *, quiet: bool = False, json_path: str | None = None, html_path: str | None = None) -> None:
    """Write the report everywhere asked. A file that cannot be written is a warning line: the
    other outputs are still produced."""
    if json_path:
        _save(lambda: _write_json(report, json_path), json_path)
    if html_path:
        _save(lambda: _write_html(report, html_path), html_path)
    if not quiet:
        from .console import print_report

        print_report(report, file=sys.stderr)


def _write_json(report: Report, path: str) -> None:
    from .json import write_json

    write_json(report, path)


def _write_html(report: Report, path: str) -> None:
    from .html import write_html

    write_html(report, path)


def _save(write, path: str) -> None:
    try:
        write()
    except (OomdoctorError, OSError) as exc:
        print(f"oomdoctor: warning: report not written to {path}: {exc}", file=sys.stderr)
