"""JSON renderer and loader for the `oomdoctor.report/1` contract."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import BadInput
from .model import Report


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False)


def write_json(report: Report, path: str | Path) -> None:
    path = Path(path)
    check_writable(path)
    path.write_text(render_json(report) + "\n", encoding="utf-8")


def load_json(path: str | Path) -> Report:
    """Read a saved report; anything that is not one is a one-line BadInput."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    try:
        return Report.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise BadInput(f"{path} is not an oomdoctor report: {exc}") from None


def check_writable(path: str | Path) -> None:
    """Fail early, in one line, when a report could not be written to `path`."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{path} is a folder; give a file name for the report")
    if not path.parent.is_dir():
        raise BadInput(f"cannot write {path}: folder {path.parent} does not exist")
