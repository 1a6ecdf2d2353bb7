"""`track` (context manager) and `watch` (decorator): the Python API on the one core.

Contract, beyond "one session, one report":
- `json=`/`html=` paths are made absolute when `track()` is entered or `watch` decorates, so a
  later `os.chdir` of the program does not move the report.
- Only the process that started a session reports: a child forked while it runs (`os.fork`,
  multiprocessing's fork start method) prints nothing and writes nothing.
- Inside `oomdoctor run` both join the running session; `step_fn.stop()` then returns a snapshot
  of that session's report and leaves the run going.
- A session started by `watch` reports when the program exits; an uncaught exception that ends
  the program is in that report (exit code 1, 130 for Ctrl-C), and the traceback python prints
  for it has no oomdoctor frame.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import types
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar, overload

from .report.output import output_path
from .runner import exit_status, printable, tool_frames
from .sizes import parse_size

if TYPE_CHECKING:
    from .report.model import Report
    from .session import Session

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def track(
    *,
    capacity: int | str | None = None,
    device: str | None = None,
    exact: bool = False,
    quiet: bool = False,
    json: str | None = None,
    html: str | None = None,
) -> Iterator[Session]:
    """Watch the memory of a block. Yields the `Session`; `session.report()` gives the report,
    printed (to stderr) when the block ends unless `quiet`. Call `session.step()` at the end of
    each iteration when the block has no optimizer and no `backward()` to find steps by."""
    from .session import Session, StepLimitReached

    active = Session.current()
    if active is not None:  # inside `oomdoctor run` or another track(): one report, not two
        yield active
        return
    session = Session(capacity=_size(capacity), device=device, exact=exact, quiet=quiet, json=output_path(json),
                      html=output_path(html))
    starter = os.getpid()
    session.start()
    try:
        yield session
    except BaseException as exc:
        ended = None if isinstance(exc, StepLimitReached) else printable(exc)
        _finish(session, starter, ended)
        raise
    _finish(session, starter, None)


@overload
def watch(fn: F) -> F: ...
@overload
def watch(fn: None = None, **options: Any) -> Callable[[F], F]: ...


def watch(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorate a training (or inference) step: each call is one step of the report.

    Bare (`@oomdoctor.watch`) or with the options of `track` (`@oomdoctor.watch(json="m.json")`).
    Outside `oomdoctor run` the first call starts a session whose report is printed when the
    program exits, or when `step_fn.stop()` is called; `step_fn.session` is that session.
    Inside `oomdoctor run`, `step_fn.stop()` returns the running session's report so far.
    """
    if fn is None:
        return lambda f: watch(f, **options)
    json, html = output_path(options.get("json")), output_path(options.get("html"))
    owned: dict[str, Any] = {}

    def session_for_call() -> Session:
        from .session import Session

        active = Session.current()
        if active is not None:
            wrapper.session = active  # type: ignore[attr-defined]
            return active
        session = Session(
            capacity=_size(options.get("capacity")), device=options.get("device"),
            exact=options.get("exact", False), quiet=options.get("quiet", False), json=json, html=html,
        ).start()
        owned.update(session=session, starter=os.getpid(), hook=_UncaughtHook(session))
        wrapper.session = session  # type: ignore[attr-defined]
        atexit.register(stop)
        return session

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = session_for_call()
        session.begin_step()
        try:
            return fn(*args, **kwargs)
        finally:
            session.end_step()

    def stop() -> Report | None:
        """End the session this decorator started, print/write its report, and return it; inside
        `oomdoctor run`, the running session's report so far."""
        from .session import Session

        session = owned.get("session")
        if session is None:
            active = Session.current()
            return active.report() if active is not None else None
        if owned["starter"] != os.getpid():  # a forked child: the parent reports
            return None
        hook = owned["hook"]
        hook.remove()
        if session._report is None:
            _finish(session, owned["starter"], hook.uncaught, hook.exit_code)
            if isinstance(hook.uncaught, KeyboardInterrupt):
                _keep_sigint_exit()
        return session.report()

    wrapper.stop = stop  # type: ignore[attr-defined]
    wrapper.session = None  # type: ignore[attr-defined]
    return wrapper


def _finish(session: Session, starter: int, exc: BaseException | None, code: int | None = None) -> None:
    """Stop `session` and print/write its report, in the process that started it only."""
    if os.getpid() != starter:
        return
    from .report.output import emit

    if exc is not None:
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    report = session.stop(exc, exit_code=code)
    emit(report, quiet=session.quiet, json_path=session.json_path, html_path=session.html_path)


def _keep_sigint_exit() -> None:
    """After an uncaught KeyboardInterrupt CPython exits by SIGINT (status 130), unless code was
    run from a string since then: rendering the report at exit does (namedtuple, dataclasses),
    and the program would exit 1. A string that raises KeyboardInterrupt sets that exit again."""
    try:
        exec("raise KeyboardInterrupt", {})
    except KeyboardInterrupt:
        pass


class _UncaughtHook:
    """A `sys.excepthook` for the life of a `watch` session: it keeps the exception that ends the
    program for the report (recorded while its frames are alive), and hands python's hook (or the
    user's) a traceback without oomdoctor's frames."""

    def __init__(self, session: Session):
        self.session = session
        self.uncaught: BaseException | None = None
        # `sys.exit(3)` reaches no excepthook and atexit is not told the status: the report
        # learns it from the call itself (a bare `raise SystemExit(3)` outside a step stays unseen).
        self.exit_code: int | None = None
        self.exit = sys.exit
        sys.exit = self._exit
        self.previous = sys.excepthook
        sys.excepthook = self

    def __call__(self, kind: type[BaseException], exc: BaseException, tb: types.TracebackType | None) -> None:
        self.uncaught = printable(exc)
        try:
            self.session.record_exception(self.uncaught)
        except Exception:  # noqa: BLE001 - never in the way of the user's traceback
            pass
        # Python's hook prints each exception's own __traceback__ (the argument only where there
        # is none): set them, as the program ends with this exception anyway.
        seen: set[int] = set()
        chained: BaseException | None = exc
        while chained is not None and id(chained) not in seen:
            seen.add(id(chained))
            chained.__traceback__ = _without_tool_frames(chained.__traceback__)
            chained = chained.__cause__ or chained.__context__
        self.previous(kind, exc, exc.__traceback__)

    def _exit(self, status: object = None) -> None:
        self.exit_code = exit_status(status)
        self.exit(status)

    def remove(self) -> None:
        if sys.excepthook is self:
            sys.excepthook = self.previous
        if sys.exit == self._exit:
            sys.exit = self.exit


def _without_tool_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    chain = []
    while tb is not None:
        chain.append(tb)
        tb = tb.tb_next
    hidden = tool_frames([t.tb_frame.f_code.co_filename for t in chain])
    kept = None
    for t, drop in reversed(list(zip(chain, hidden))):
        if not drop:
            kept = types.TracebackType(kept, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return kept


def _size(value: int | str | None) -> int | None:
    return None if value is None else parse_size(value)
