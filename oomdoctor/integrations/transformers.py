"""Hugging Face Transformers: `OOMDoctorCallback`, the memory report of `Trainer.train`.

    trainer = Trainer(model, args, train_dataset=data, callbacks=[OOMDoctorCallback(json="memory.json")])
    trainer.train()

The session starts when training begins (or joins one already running: `oomdoctor run`,
`oomdoctor.track()`); each optimization step is one step, its gradient-accumulation micro-batches
included; the report comes when training ends.

A `TrainerCallback` is not told when `train()` raises. For the post-mortem of an out-of-memory
error, run the script under `oomdoctor run`, or call `trainer.train()` inside
`with oomdoctor.track():`: the callback joins that session, which reports the error. A session
left open by a `train()` that raised goes on when the same callback's training begins again (as
`auto_find_batch_size` retries do), so one report covers every attempt.
"""
from __future__ import annotations

from typing import Any

from ..report.model import Report
from . import Attachment, require

_transformers = require("transformers", extra="transformers")


class OOMDoctorCallback(_transformers.TrainerCallback):
    """Watch the memory of `Trainer.train`; `callback.report` is the last report it produced."""

    def __init__(self, json: str | None = None, html: str | None = None, quiet: bool = False,
                 capacity: int | str | None = None, exact: bool = False):
        self._attachment = Attachment(capacity=capacity, json=json, html=html, quiet=quiet, exact=exact)
        self.report: Report | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._attachment.open()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._attachment.session is not None:
            self._attachment.session.begin_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._attachment.session is not None:
            self._attachment.session.end_step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        report = self._attachment.close()
        if report is not None:
            self.report = report
