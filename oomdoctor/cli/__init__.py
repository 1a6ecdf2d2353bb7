"""Command line: `oomdoctor COMMAND ...`. One module per command; this module only dispatches.

Errors the user must fix become one line on stderr and exit code 2 (design.md, "Contracts"); the
`run` command returns the script's own exit code.

No command module imports torch when it is imported (only when a script runs, or a snapshot is
read): `--help`, `lint`, `explain` and `report` answer without paying for it.
"""
from __future__ import annotations

import sys

import typer

from ..errors import OomdoctorError
from ._app import app

# Registration happens on import: each module decorates its command with @app.command().
from . import run as _run  # noqa: F401,E402
from . import report as _report  # noqa: F401,E402
from . import batch as _batch  # noqa: F401,E402
from . import lint as _lint  # noqa: F401,E402
from . import explain as _explain  # noqa: F401,E402
from . import gpus as _gpus  # noqa: F401,E402


# Typer >= 0.20 ships its own copy of click, older ones use click: take the classes from Typer.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def main(argv: list[str] | None = None) -> None:
    try:
        result = app(args=argv, prog_name="oomdoctor", standalone_mode=False)
    except _USAGE_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `oomdoctor`: its help, as a usage error
            print(exc.format_message(), file=sys.stderr)
            sys.exit(2)
        command = exc.ctx.command_path if exc.ctx else "oomdoctor"
        _fail(f"{command}: {exc.format_message()} (see --help)", 2)
    except typer.Abort:
        _fail("interrupted", 130)
    except OomdoctorError as exc:
        _fail(str(exc), exc.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> None:
    print(f"oomdoctor: error: {message}", file=sys.stderr)
    sys.exit(code)
