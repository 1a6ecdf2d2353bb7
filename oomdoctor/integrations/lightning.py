"""PyTorch Lightning: `OOMDoctorCallback`, the memory report of `trainer.fit`.

    trainer = Trainer(callbacks=[OOMDoctorCallback(json="memory.json")])
    trainer.fit(model)

The session starts when fit starts (or joins one already running: `oomdoctor run`,
`oomdoctor.track()`); each training batch is one step; the report comes when fit ends, and also
when fit raises, an out-of-memory error included: then it carries the `oom` post-mortem, and the
exception goes on to the caller unchanged. Works with `lightning` and with `pytorch_lightning`.
"""
from __future__ import annotations

from typing import Any

from ..report.model import Report
from . import Attachment, require

_pl = require("lightning.pytorch", "pytorch_lightning", extra="lightning")


class OOMDoctorCallback(_pl.Callback):
    """Watch the memory of `trainer.fit`; `callback.report` is the last report it produced."""

    def __init__(self, json: str | None = None, html: str | None = None, quiet: bool = False,
                 capacity: int | str | None = None, exact: bool = False):
        super().__init__()
        self._attachment = Attachment(capacity=capacity, json=json, html=html, quiet=quiet, exact=exact)
        self.report: Report | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._attachment.open()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._attachment.session is not None:
            self._attachment.session.begin_step()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._attachment.session is not None:
            self._attachment.session.end_step()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish(None)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning calls this before it re-raises, while the failed frames are still alive.
        self._finish(exception)

    def _finish(self, exc: BaseException | None) -> None:
        report = self._attachment.close(exc)
        if report is not None:
            self.report = report
