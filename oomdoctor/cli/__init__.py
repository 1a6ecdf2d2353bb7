"""Command line: `oomdoctor COMMAND ...`. One module per command; this module only dispatches.

Errors the user must fix become one line on stderr and exit code 2 (design.md, "Contracts"); the
`run` command returns the script's own exit code.
"""
from __future__ import annotations

import sys

import click

from ..errors import OomdoctorError
from ._app import app

# Registration happens on import: each module decorates its command with @app.command().
from . import run as _run  # noqa: F401,E402
from . import report as _report  # noqa: F401,E402


# click >= 8.2 raises this for a bare `oomdoctor`; older versions print help themselves.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main(argv: list[str] | None = None) -> None:
    try:
        result = app(args=argv, prog_name="oomdoctor", standalone_mode=False)
    except _NO_ARGS_IS_HELP as exc:  # bare `oomdoctor`: the help text, exit 2 like click does
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(2)
    except click.exceptions.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "oomdoctor"
        _fail(f"{command}: {exc.format_message()} (see --help)", 2)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except OomdoctorError as exc:
        _fail(str(exc), exc.exit_code)
    sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> None:
    print(f"oomdoctor: error: {message}", file=sys.stderr)
    sys.exit(code)
