"""Where a finished report goes: the terminal (stderr, so the script's stdout stays its own),
a JSON file, an HTML file. Shared by the CLI, the decorator and the context manager.

Output paths are made absolute when they are given (`output_path`), so that a script's
`os.chdir` cannot move the report among its own files, and checked then (`check_output`) so that
a long run does not end in a report that cannot be written. A file that still cannot be written at
the end (a full disk, `/dev/full`) does not stop the other outputs; it is said last, in one line
per file, and `emit` returns False so that the caller can make its exit status say so too.
"""
from __future__ import annotations

import os
import sys

from ..errors import BadInput, OomdoctorError
from .model import Report


def output_path(path: str | None) -> str | None:
    """`path` made absolute against the current folder, now (None stays None)."""
    return os.path.abspath(path) if path else None


def check_output(path: str) -> None:
    """Fail in one line (BadInput, exit 2) when a report could not be written to `path`: a folder,
    a missing folder, no permission, a read-only file system. Nothing is left behind; a device or a
    pipe is not opened (opening a FIFO would wait for a reader).

    A new file is tried under a name of its own in the same folder, never under `path`: the ranks
    of a torchrun job check the same path at the same moment, and one rank's probe file must not
    make the other's check fail (or be left behind by it)."""
    import tempfile

    from .json import check_writable

    check_writable(path)
    try:
        if os.path.isfile(path):
            with open(path, "a"):
                pass
        elif not os.path.lexists(path):
            folder, name = os.path.split(path)
            with tempfile.NamedTemporaryFile(dir=folder or ".", prefix=f".{name[:32]}.", suffix=".check"):
                pass
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}") from None


def emit(report: Report, *, quiet: bool = False, json_path: str | None = None, html_path: str | None = None) -> bool:
    """Write the report everywhere asked; True when every file asked for was written."""
    problems = save(report, json_path=json_path, html_path=html_path)
    if not quiet:
        show(report)
    tell(problems)
    return not problems


def save(report: Report, *, json_path: str | None = None, html_path: str | None = None) -> list[str]:
    """Write the JSON and HTML files asked for; one line for each that could not be written."""
    problems = []
    for path, write in ((json_path, _write_json), (html_path, _write_html)):
        if not path:
            continue
        try:
            write(report, path)
        except (OomdoctorError, OSError) as exc:
            problems.append(f"report not written to {path}: {exc}")
    return problems


def show(report: Report) -> None:
    """The report on the terminal (stderr)."""
    from .console import print_report

    print_report(report, file=sys.stderr)


def tell(problems: list[str]) -> None:
    for problem in problems:
        print(f"oomdoctor: error: {problem}", file=sys.stderr)


def _write_json(report: Report, path: str) -> None:
    from .json import write_json

    write_json(report, path)


def _write_html(report: Report, path: str) -> None:
    from .html import write_html

    write_html(report, path)
