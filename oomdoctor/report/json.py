"""JSON renderer and loader for the `oomdoctor.report/1` contract.

`load_json(path)` is the one way a saved report comes back in: it reads at most
`MAX_REPORT_BYTES` from a regular file, parses it, and checks every field (`schema.py`); whatever
is wrong becomes a one-line `BadInput` naming the file and the first bad field.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..errors import BadInput
from .model import Report
from .schema import SchemaError
from .text import clean

# A run keeps a window of 256 steps, so a report is tens of KiB, a merged one of 64 ranks a few MiB.
MAX_REPORT_BYTES = 32 * 2**20


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False)


def write_json(report: Report, path: str | Path) -> None:
    path = Path(path)
    check_writable(path)
    path.write_text(render_json(report) + "\n", encoding="utf-8")


def load_json(path: str | Path) -> Report:
    """Read a saved report; anything that is not one is a one-line BadInput."""
    path = Path(path)
    name = clean(path, 200)
    text = _read(path, name)
    if not text.strip():
        raise BadInput(f"{name} is empty: not an oomdoctor report")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{name} is not JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise BadInput(f"{name} is nested too deeply to be an oomdoctor report") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise BadInput(f"{name} is not an oomdoctor report: {clean(exc, 200)}") from None
    try:
        return Report.from_dict(data)
    except SchemaError as exc:
        raise BadInput(f"{name}: {exc}") from None
    except RecursionError:
        raise BadInput(f"{name} is nested too deeply to be an oomdoctor report") from None


def _read(path: Path, name: str) -> str:
    """The file's text, read only from a regular file and only up to the size a report can have."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise BadInput(f"{name} is a folder, not a report file")
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(f"{name} is not a regular file")
        # O_NONBLOCK: a file swapped for a FIFO after the check must not hang the read.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            raw = handle.read(MAX_REPORT_BYTES + 1)
    except FileNotFoundError:
        raise BadInput(f"no such file: {name}") from None
    except OSError as exc:
        raise BadInput(f"cannot read {name}: {exc.strerror}") from None
    if len(raw) > MAX_REPORT_BYTES:
        raise BadInput(f"{name} is larger than {MAX_REPORT_BYTES >> 20} MiB: not a report oomdoctor wrote")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{name} is not UTF-8 text (byte {exc.start}): not an oomdoctor report") from None


def check_writable(path: str | Path) -> None:
    """Fail early, in one line, when a report could not be written to `path`."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path} is a folder; give a file name for the report")
    if not path.parent.is_dir():
        raise BadInput(f"cannot write {path}: folder {path.parent} does not exist")
