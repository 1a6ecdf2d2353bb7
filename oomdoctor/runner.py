"""Run a user's script or module exactly as `python` would, under a session.

What `python script.py args` gives, the script gets here too: `sys.argv`, `__name__ ==
"__main__"` in a real `__main__` module, `sys.path[0]` (the script's folder, or the cwd for
`-m`), the cwd, stdout, and the exit code (`sys.exit(n)`, 1 with a traceback for an uncaught
exception, death by SIGINT for Ctrl-C, recorded as 130). The report is produced in every one of
those cases, after the script's own output, by the process that started the script only (not by
a child it forks). A traceback is the one python prints: without oomdoctor's and runpy's frames,
nor torch's dispatch frames around the ledger's (`tool_frames`).
"""
from __future__ import annotations

import builtins
import contextlib
import importlib.machinery
import importlib.util
import os
import runpy
import signal
import sys
import traceback
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from .errors import BadInput

if TYPE_CHECKING:  # the session imports torch: only once a script runs
    from .session import Session


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
        with _python_path(target):
            _find_module(target.module)
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
    A process forked by the script that runs on to the end of it exits as python's would, without
    `emit`: the report is the starting process's alone.
    """
    from .session import StepLimitReached

    saved_argv, starter = sys.argv[:], os.getpid()
    sys.argv = [target.argv0, *target.args]
    error: BaseException | None = None
    code = 0
    # The script's globals live on until the report is made, as they do under python until exit:
    # what the script still holds at its end is part of its memory.
    kept: list = []
    with _python_path(target):
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
            error = printable(exc)
            session.record_exception(error)  # while its frames, and their tensors, are still alive
            print_traceback(exc)
            code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        finally:
            sys.argv = saved_argv
    _flush()
    if os.getpid() == starter:
        emit(error, code)
    if isinstance(error, KeyboardInterrupt):
        _die_of_sigint()
    return code


def _find_module(name: str) -> None:
    """Is there a module `name` to run? Found as the import system would, without running any
    package's `__init__` (that is the script's work, under the session)."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for depth in range(1, len(parts)):
            if spec is None or spec.submodule_search_locations is None:
                break
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth + 1]),
                                                           list(spec.submodule_search_locations))
        if spec is not None and spec.submodule_search_locations is not None:  # a package runs its __main__
            if importlib.machinery.PathFinder.find_spec(f"{name}.__main__", list(spec.submodule_search_locations)) is None:
                raise BadInput(f"no module named '{name}.__main__'; {name!r} is a package and cannot be run directly")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise BadInput(f"no module named {name!r}")


@contextlib.contextmanager
def _python_path(target: Target) -> Iterator[None]:
    """`sys.path[0]` as python sets it: the script's folder, or the current folder for `-m`.
    It replaces oomdoctor's own first entry (its `bin` folder, or the cwd of `python -m
    oomdoctor`), and stays untouched where python adds none (`-P`, PYTHONSAFEPATH)."""
    if getattr(sys.flags, "safe_path", False):
        yield
        return
    folder = os.getcwd() if target.module is not None else os.path.dirname(os.path.realpath(target.path))
    saved = sys.path[0] if sys.path else None
    if sys.path:
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if saved is not None and sys.path:
            sys.path[0] = saved


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
    """What python's exit status is for `sys.exit(code)`; like python, a message is printed."""
    if exc.code is not None and not isinstance(exc.code, int):
        print(exc.code, file=sys.stderr)
    return exit_status(exc.code)


def exit_status(code: object) -> int:
    """The process's exit status for `sys.exit(code)`: None is 0, an int is taken modulo 256,
    anything else (a message) is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code % 256
    return 1


def printable(exc: BaseException) -> BaseException:
    """`exc`, or where its `__str__` raises, a stand-in of the same type name and traceback whose
    message is python's own "<exception str() failed>": the report must not fail on it."""
    try:
        str(exc)
        return exc
    except Exception:  # noqa: BLE001 - any failure of the user's __str__
        base = KeyboardInterrupt if isinstance(exc, KeyboardInterrupt) else Exception
        stand_in = type(type(exc).__name__, (base,), {"__module__": type(exc).__module__})
        return stand_in("<exception str() failed>").with_traceback(exc.__traceback__)


def print_traceback(exc: BaseException) -> None:
    """Print `exc` as python does, without the frames oomdoctor adds (see `tool_frames`), also
    in the exceptions it was raised from or while handling."""
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    seen, todo = set(), [report]
    while todo:
        one = todo.pop()
        if id(one) in seen:
            continue
        seen.add(id(one))
        hidden = tool_frames([f.filename for f in one.stack])
        one.stack = traceback.StackSummary.from_list([f for f, drop in zip(one.stack, hidden) if not drop])
        todo += [e for e in (one.__cause__, one.__context__) if e is not None]
    _flush()
    print("".join(report.format()), end="", file=sys.stderr)


_OURS = (os.path.dirname(__file__) + os.sep, runpy.__file__, "<frozen runpy>")
# torch's wrappers around a dispatch mode (outside the ledger's frame) and the op it calls (inside):
# python shows none of them for the same failing op without oomdoctor.
_DISPATCH = tuple(os.path.join("torch", *p) for p in (("_compile.py",), ("_dynamo", "eval_frame.py"), ("_ops.py",),
                                                      ("utils", "_python_dispatch.py")))


def tool_frames(filenames: list[str]) -> list[bool]:
    """Which frames of a stack (outermost first) oomdoctor put there: its own and runpy's, and
    torch's dispatch machinery next to them."""
    hidden = [name.startswith(_OURS) for name in filenames]
    for i in [i for i, ours in enumerate(hidden) if ours]:
        for step in (-1, 1):
            j = i + step
            while 0 <= j < len(filenames) and filenames[j].endswith(_DISPATCH):
                hidden[j] = True
                j += step
    return hidden


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
