"""Integrations with training frameworks: callbacks that drive the one `Session`.

Each framework is an optional extra: `pip install 'oomdoctor[lightning]'` or
`'oomdoctor[transformers]'`. Importing an integration without its library raises an ImportError
that names the extra to install (`require`).

`Attachment` is what the callbacks (and the notebook magic) share: the session they watch is either
one they started, which they stop and report when training ends, or one already running
(`oomdoctor run`, `oomdoctor.track()`), which they join and leave to its owner to report.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..report.json import check_writable
from ..report.model import Report
from ..session import Session
from ..sizes import parse_size


def require(*modules: str, extra: str) -> ModuleType:
    """The first of `modules` that imports; else an ImportError naming the extra to install."""
    for name in modules:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(
        f"this oomdoctor integration needs {' or '.join(modules)}, which is not installed: "
        f"pip install 'oomdoctor[{extra}]'"
    )


class Attachment:
    """A session started on demand (`open`) or joined, and closed with its report (`close`)."""

    def __init__(self, *, capacity: int | str | None = None, json: str | None = None,
                 html: str | None = None, quiet: bool = False, exact: bool = False):
        # Checked now, not after an hour of training: a bad size or folder is a one-line error.
        self.capacity = None if capacity is None else parse_size(capacity)
        for path in (json, html):
            if path:
                check_writable(path)
        self.json_path, self.html_path, self.quiet, self.exact = json, html, quiet, exact
        self.session: Session | None = None
        self.owned = False

    def open(self) -> Session:
        if self.session is None:
            running = Session.current()
            self.owned = running is None
            self.session = running or Session(
                capacity=self.capacity, exact=self.exact, quiet=self.quiet, json=self.json_path, html=self.html_path,
            ).start()
        return self.session

    def close(self, exc: BaseException | None = None) -> Report | None:
        """Stop an owned session and return its report (also written where asked, printed unless
        quiet). A joined session runs on: it only learns of `exc`, while its frames are alive."""
        session, self.session = self.session, None
        if session is None:
            return None
        if not self.owned:
            if exc is not None:
                session.record_exception(exc)
            return None
        from ..report.output import emit  # late: output imports the renderers

        report = session.stop(exc)
        emit(report, quiet=self.quiet, json_path=self.json_path, html_path=self.html_path)
        return report
