"""Where closed steps go: the timeline, the probes, and `--steps K`'s stop."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..report.model import Step
from .clock import OpenStep
from .hooks import StepLimitReached

if TYPE_CHECKING:
    from ..session import Session


class StepLog:
    def __init__(self, session: "Session"):
        self.session = session
        self.forwards = 0  # root forwards since the last optimizer step or backward pass ended

    def record(self, step: OpenStep) -> None:
        """A step closed: keep it, tell the probes, stop the run if asked to."""
        session, t = self.session, self.session.timeline
        end = step.end_bytes if step.end_bytes is not None else session.meter.current_bytes()
        end_time = step.end_time if step.end_time is not None else time.perf_counter()
        record = Step(
            index=step.index,
            start_bytes=step.start_bytes,
            peak_bytes=max(step.peak, step.start_bytes, end),
            end_bytes=end,
            duration_s=round(end_time - step.start_time, 6),
            by_category=dict(step.peak_by_category),
            exact=step.exact and not step.estimated_peak,
        )
        t.add(record)
        t.note_peak(record.peak_bytes, record.by_category, record.index, estimated=not record.exact)
        if record.exact and t.batch_size and t.exception is None:  # a failed step is no profile
            # What the batch costs: the step's peak beyond parameters and optimizer state. Counting
            # gradients in (backward's temporaries are among them) errs on the safe side.
            live = session.ledger.by_category
            fixed = live["parameters"] + live["optimizer_state"]
            t.per_sample_bytes = max(t.per_sample_bytes, max(0, record.peak_bytes - fixed) / t.batch_size)
        for probe in session.probes:
            probe.step_end(session, record)
        if session.stop_after_steps is not None and t.steps_total >= session.stop_after_steps:
            raise StepLimitReached(f"stopped after {t.steps_total} steps")

    def outside(self, step: OpenStep) -> None:
        """A peak outside any step: before the first, between marked steps, after the last."""
        t = self.session.timeline
        if t.steps_total == 0 and self.session.stopping:
            where = "in a run without steps (no optimizer step or backward pass: inference, say)"
        elif t.steps_total == 0:
            where = "before the first step"
        elif self.session.stopping:
            where = f"after the last step (step {t.steps()[-1].index}): evaluation or saving, say"
            if self.forwards and not self.session.meter.exact_window:
                t.unwatched_forwards = self.forwards
        else:
            where = f"between steps {t.steps()[-1].index} and {t.steps()[-1].index + 1}"
        t.note_peak(step.peak, step.peak_by_category, None, where, step.estimated_peak or not step.exact)
