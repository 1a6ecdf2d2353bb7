"""`oomdoctor run`: run a script (or `-m module`) under the profiler and report at the end."""
from __future__ import annotations

from typing import List, Optional

import typer

from ..errors import BadInput
from ..output import emit
from ..report.json import check_writable
from ..runner import Target, check_target, run_target
from ..session import Session
from ..sizes import parse_size
from ._app import app


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def run(
    script: Optional[str] = typer.Argument(None, metavar="SCRIPT", help="Python script to run (or use -m MODULE)."),
    args: Optional[List[str]] = typer.Argument(None, metavar="[ARGS]...", help="Arguments for the script."),
    module: Optional[str] = typer.Option(None, "-m", help="Run a module as `python -m MODULE` does."),
    json: Optional[str] = typer.Option(None, "--json", metavar="PATH", help="Write the report as JSON."),
    html: Optional[str] = typer.Option(None, "--html", metavar="PATH", help="Write a self-contained HTML report."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No report on the terminal."),
    capacity: Optional[str] = typer.Option(
        None, "--capacity", metavar="SIZE",
        help="Behave as if the device had SIZE bytes (e.g. 2GiB): OOMs happen past it, also on CPU."),
    exact: bool = typer.Option(False, "--exact", help="Watch every op of every step (slower on CPU)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Stop the script after this many steps."),
    history: bool = typer.Option(
        True, "--history/--no-history",
        help="CUDA: record allocations with Python stacks and write a memory_viz snapshot on OOM."),
) -> int:
    """Run SCRIPT like `python SCRIPT ARGS...` and report its memory, step by step.

    The script's exit code, stdout, sys.argv and cwd are what python gives; the report goes to
    stderr at the end, also when the script raises, is interrupted or runs out of memory.
    """
    args = list(args or [])
    if module is not None:
        target = Target(None, module, ([script] if script is not None else []) + args)
    elif script is None:
        raise BadInput("give a script to run, or -m MODULE")
    elif script.startswith("-"):
        raise BadInput(f"no such option: {script}")
    else:
        target = Target(script, None, args)
    size = parse_size(capacity) if capacity is not None else None
    for path in (json, html):
        if path:
            check_writable(path)  # before the run: an hour of training must not lose its report
    check_target(target)

    session = Session(capacity=size, exact=exact, stop_after_steps=steps, command=target.describe(), json=json,
                      html=html, quiet=quiet, history=history)

    def finish(error: BaseException | None, code: int) -> None:
        report = session.stop(error, exit_code=code)
        emit(report, quiet=quiet, json_path=json, html_path=html)

    return run_target(target, session, finish)
