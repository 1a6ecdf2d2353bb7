"""`track` (context manager) and `watch` (decorator): the Python API on the one core."""
from __future__ import annotations

import atexit
import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar, overload

from .report.model import Report
from .session import Session
from .sizes import parse_size

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
    active = Session.current()
    if active is not None:  # inside `oomdoctor run` or another track(): one report, not two
        yield active
        return
    session = Session(capacity=_size(capacity), device=device, exact=exact, quiet=quiet, json=json, html=html)
    with session:
        yield session


@overload
def watch(fn: F) -> F: ...
@overload
def watch(fn: None = None, **options: Any) -> Callable[[F], F]: ...


def watch(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorate a training (or inference) step: each call is one step of the report.

    Bare (`@oomdoctor.watch`) or with the options of `track` (`@oomdoctor.watch(json="m.json")`).
    Outside `oomdoctor run` the first call starts a session whose report is printed when the
    program exits, or when `step_fn.stop()` is called; `step_fn.session` is that session.
    """
    if fn is None:
        return lambda f: watch(f, **options)
    owned: dict[str, Session] = {}

    def session_for_call() -> Session:
        active = Session.current()
        if active is not None:
            return active
        session = Session(
            capacity=_size(options.get("capacity")), device=options.get("device"),
            exact=options.get("exact", False), quiet=options.get("quiet", False),
            json=options.get("json"), html=options.get("html"),
        ).start()
        owned["session"] = wrapper.session = session  # type: ignore[attr-defined]
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
        """End the session this decorator started, print/write its report, and return it."""
        from .report.output import emit

        session = owned.get("session")
        if session is None:
            return None
        if session._report is None:
            report = session.stop()
            emit(report, quiet=session.quiet, json_path=session.json_path, html_path=session.html_path)
        return session.report()

    wrapper.stop = stop  # type: ignore[attr-defined]
    wrapper.session = None  # type: ignore[attr-defined]
    return wrapper


def _size(value: int | str | None) -> int | None:
    return None if value is None else parse_size(value)

