"""Run a user's script or module exactly as `python` would, under a session.

What `python script.py args` gives, the script gets here too: `sys.argv`, `__name__ ==
"__main__"` in a real `__main__` module, `sys.path[0]` (the script's folder, or the cwd for
`-m`), the cwd, stdout, and the exit code (`sys.exit(n)`, 1 with a traceback for an uncaught
exception, death by SIGINT for Ctrl-C). The report is produced in every one of those cases,
after the script's own output.
"""
from __future__ import annotations

import builtins
import importlib.machinery
import os
import runpy
import signal
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Callable

from .errors import BadInput
from .session import Session, StepLimitReached


@dataclass
class Target:
    """What to run: a script path or a module name, and its arguments."""

    path: str | None
    module: str | None
    args: list[str]

    @property
    def argv0(self) -> str:
        return self.path if self.path is not None else self.module  # replaced by runpy for -m

    def describe(self) -> list[str]:
        head = [self.path] if self.path is not None else ["-m", self.module]
        return [*head, *self.args]


def check_target(target: Target) -> None:
    """Fail before anything runs: missing file, unreadable file, syntax error, unknown module."""
    if target.module is not None:
        import importlib.util

        try:
            found = importlib.util.find_spec(target.module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise BadInput(f"no module named {target.module!r}")
        return
    path = target.path
    if not os.path.exists(path):
        raise BadInput(f"can't open file {path!r}: no such file")
    if os.path.isdir(path):
        raise BadInput(f"{path!r} is a folder; give a Python script")
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise BadInput(f"can't open file {path!r}: {exc.strerror}") from None
    try:
        compile(source, path, "exec")
    except (SyntaxError, ValueError) as exc:
        # As python reports it: the file, the line, the caret, the message.
        lines = traceback.format_exception_only(type(exc), exc)
        print("".join(lines).rstrip(), file=sys.stderr)
        raise BadInput(f"{path} does not compile ({type(exc).__name__})") from None


def run_target(target: Target, session: Session, emit: Callable[[BaseException | None, int], None]) -> int:
    """Run `target` under `session`; call `emit(exc, code)` once it ended; return the exit code.

    For Ctrl-C this does not return: like python, the process dies of SIGINT after the report.
    """
    saved_argv, saved_path0 = sys.argv[:], sys.path[0] if sys.path else None
    sys.argv = [target.argv0, *target.args]
    folder = os.getcwd() if target.module is not None else os.path.dirname(os.path.realpath(target.path))
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    error: BaseException | None = None
    code = 0
    # The script's globals live on until the report is made, as they do under python until exit:
    # what the script still holds at its end is part of its memory.
    kept: list = []
    session.start()
    try:
        if target.module is not None:
            kept.append(runpy.run_module(target.module, run_name="__main__", alter_sys=True))
        else:
            _run_path(target.path, kept)
    except StepLimitReached:
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:  # noqa: BLE001 - the user's exception, reported like python
        session.record_exception(exc)  # while its frames, and their tensors, are still alive
        _print_traceback(exc)
        error = exc
        code = 1
    finally:
        sys.argv = saved_argv
        if saved_path0 is not None and sys.path:
            sys.path[0] = saved_path0
    _flush()
    emit(error, code)
    if isinstance(error, KeyboardInterrupt):
        _die_of_sigint()
    return code


def _run_path(path: str, kept: list) -> None:
    """Execute a script in a fresh `__main__` module, as python does.

    Not `runpy.run_path`: it rewrites sys.argv[0], and python keeps it as typed while making
    `__file__` absolute (3.9+).
    """
    filename = os.path.abspath(path)
    with open(filename, "rb") as f:
        code = compile(f.read(), filename, "exec")
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=filename, __builtins__=builtins, __cached__=None, __package__=None,
                         __spec__=None, __loader__=importlib.machinery.SourceFileLoader("__main__", filename))
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    kept.append(main)
    try:
        exec(code, main.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _exit_code(exc: SystemExit) -> int:
    """What python's exit status is for `sys.exit(code)`."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF if exc.code >= 0 else exc.code % 256
    print(exc.code, file=sys.stderr)
    return 1


def _print_traceback(exc: BaseException) -> None:
    """Print like python does, without oomdoctor's and runpy's own frames (the runner on top,
    the ledger's hooks in the middle of a simulated OOM)."""
    ours = (os.path.dirname(__file__) + os.sep, runpy.__file__, "<frozen runpy>")
    if "simulated by oomdoctor" in str(exc):  # also the wrappers torch puts around dispatch modes
        ours += (os.path.join("torch", "_compile.py"), os.path.join("torch", "_dynamo", "eval_frame.py"))
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    report.stack = traceback.StackSummary.from_list(
        [f for f in report.stack if not (f.filename.startswith(ours[:3]) or f.filename.endswith(ours[3:]))])
    sys.stdout.flush()
    print("".join(report.format()), end="", file=sys.stderr)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _die_of_sigint() -> None:
    """Python exits an uncaught KeyboardInterrupt by re-raising SIGINT (shell status 130)."""
    _flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    sys.exit(130)  # only where the signal did not end us (e.g. not the main thread)
