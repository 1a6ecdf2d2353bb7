"""The step clock: where one training step ends and the next begins, found from events alone.

A pure state machine. It is told what happened (`optimizer_pre`, `optimizer_post`,
`backward_end`, explicit `begin`/`end`/`mark`, `finish`) and asks its `Meter` for bytes at the
boundaries it decides; it never touches a tensor, so it is tested with event sequences.

The rules, in the user's terms:
- one optimizer step is one step. Several optimizers stepping in one iteration (a GAN) are one
  step: a step closes when an optimizer that already stepped in it steps again, at the end of the
  step's last optimizer step;
- optimizers that take turns (layer-wise training: optimizer A for a while, then B) are not
  merged: once the last step was exactly the optimizers stepped so far, a different optimizer
  stepping after a backward of its own starts a new step;
- `backward()` calls while no optimizer has stepped (hand-written updates) are steps, held back
  until it is clear that no optimizer follows, so gradient accumulation is not split into steps;
- explicit marks (`begin`/`end`, `mark`, the decorator) take precedence from the first one on;
- an optimizer whose `step(closure)` runs forward and backward inside (LBFGS) is one step per call.
"""
from __future__ import annotations

import time
from typing import Protocol

from ..report.model import empty_categories

# Backward-only steps held back before deciding the script updates parameters by hand: larger
# than any common gradient-accumulation factor. Once an optimizer exists (made, not yet stepped),
# its first step is coming: nanoGPT accumulates 40 micro-batches by default, others more. Held
# steps reach the probes late (a retained graph is named once its step closes, while the frames
# holding it are alive), so without an optimizer the wait stays short.
PENDING_BACKWARDS = 32
PENDING_WITH_OPTIMIZER = 1024


class OpenStep:
    """A step being measured: its boundaries so far and its peak."""

    __slots__ = ("index", "start_bytes", "start_time", "peak", "peak_by_category", "exact",
                 "end_bytes", "end_time", "stepped", "estimated_peak")

    def __init__(self, index: int, start_bytes: int, start_time: float, exact: bool):
        self.index = index
        self.start_bytes = start_bytes
        self.start_time = start_time
        self.peak = start_bytes
        self.peak_by_category: dict[str, int] = empty_categories()
        self.exact = exact
        self.estimated_peak = False  # the peak came from an estimate, not from a measured value
        self.end_bytes: int | None = None  # set at each candidate end (optimizer post, backward)
        self.end_time: float | None = None
        self.stepped: set[int] = set()  # ids of optimizers that stepped in this step

    def raise_peak(self, peak: int, by_category: dict[str, int], estimated: bool = False) -> None:
        if peak >= self.peak:
            self.peak, self.peak_by_category, self.estimated_peak = peak, dict(by_category), estimated


class Meter(Protocol):
    """What the clock needs to know about memory, and where closed steps go."""

    def prepare(self, index: int) -> None:
        """Step `index` is about to run: measure from now on the way it will be measured."""

    def open_window(self, index: int) -> bool:
        """A step starts: measure it as `prepare` chose, or choose now (True: exactly); what
        peaked since the last step closed is accounted outside any step."""

    def boundary(self) -> int:
        """Bytes in use now, after reading what is known by its role (parameters, gradients...)."""

    def take_peak(self, step: OpenStep) -> None:
        """Fold the peak since the last call into `step` and start a new peak window."""

    def renumber(self, index: int) -> None:
        """The open step took an earlier index (held-back backward passes were merged into it)."""

    def outside_steps(self, step: OpenStep) -> None:
        """`step` was no step (dropped or unfinished): its peak counts for the run only."""

    def close(self, step: OpenStep) -> None:
        """`step` is finished: record it."""


class StepClock:
    def __init__(self, meter: Meter, clock=time.perf_counter):
        self.meter = meter
        self.now = clock
        self.open: OpenStep | None = None
        self.pending: list[OpenStep] = []  # backward-only steps held back
        self.explicit = False
        self.optimizer_seen = False
        self.in_optimizer = 0
        self.next_index = 0
        self.last_stepped: frozenset[int] | None = None  # optimizers of the last closed step
        self.backward_since_optimizer = False
        self.trained = False  # a forward, backward or optimizer step happened: there are steps
        self.optimizer_made = False  # an optimizer exists: backward-only steps are its micro-batches

    # -- events --------------------------------------------------------------------------------
    def start(self) -> None:
        self._open_step(self.now())

    def training_starts(self) -> None:
        """The first forward of the run: if step 0 is still the session's first window, it starts
        now (building the model and loading data came before it)."""
        self.trained = True
        step = self.open
        if step is not None and step.index == 0 and not self.explicit and not self.pending:
            step.start_bytes = self.meter.boundary()
            step.start_time = self.now()

    def optimizer_exists(self) -> None:
        self.optimizer_made = True

    def optimizer_pre(self, optimizer_id: int) -> None:
        self.trained = True
        self.in_optimizer += 1
        if self.explicit or self.in_optimizer > 1:
            return
        step = self.open
        if step is None or not step.stepped:
            return
        again = optimizer_id in step.stepped
        takes_turn = (self.backward_since_optimizer and self.last_stepped is not None
                      and step.stepped == self.last_stepped)
        if again or takes_turn:
            # The iteration ended at the last optimizer step; the peak since then is the new step's.
            carried = OpenStep(step.index, 0, 0.0, step.exact)
            self.meter.take_peak(carried)
            self.open = None
            self._close(step)
            self._open_step(step.end_time or self.now(), start_bytes=step.end_bytes)
            self.open.raise_peak(carried.peak, carried.peak_by_category, carried.estimated_peak)

    def optimizer_post(self, optimizer_id: int) -> None:
        self.in_optimizer = max(0, self.in_optimizer - 1)
        if self.explicit or self.in_optimizer:
            return
        self.backward_since_optimizer = False
        if not self.optimizer_seen:
            self.optimizer_seen = True
            self._merge_pending()
        step = self.open
        if step is None:
            return
        step.end_bytes = self.meter.boundary()
        self.meter.take_peak(step)
        step.stepped.add(optimizer_id)
        step.end_time = self.now()
        # The next step's forward and backward run before this step is known to be over (at the
        # next optimizer step): from here on, measure the way the next step will be measured.
        # (Not at the next forward: a module hook may run inside compiled code, where switching
        # the per-op view would leave PyTorch's dispatcher inconsistent.)
        self.meter.prepare(self.next_index)

    def backward_end(self) -> None:
        self.trained = True
        if self.in_optimizer:
            return
        self.backward_since_optimizer = True
        if self.explicit or self.optimizer_seen or self.open is None:
            return
        step = self.open
        step.end_bytes = self.meter.boundary()
        self.meter.take_peak(step)
        step.end_time = self.now()
        self.pending.append(step)
        self.open = None
        if len(self.pending) > (PENDING_WITH_OPTIMIZER if self.optimizer_made else PENDING_BACKWARDS):
            # no optimizer step is coming: hand-written updates
            self._flush_pending()
        self._open_step(step.end_time, start_bytes=step.end_bytes)

    def begin(self) -> None:
        """An explicit step starts. Whatever ran before the first one is no step."""
        if not self.explicit:
            self.explicit = True
            self.pending.clear()
            if self.open is not None:
                step, self.open = self.open, None
                self.meter.take_peak(step)
                self.meter.outside_steps(step)
                self.next_index = step.index  # the first marked step is step 0
        elif self.open is not None:  # begin without end: the previous step ends here
            self._close_now()
        self._open_step(self.now())

    def end(self) -> None:
        if self.explicit and self.open is not None:
            self._close_now()

    def mark(self) -> None:
        """The end of a step, and the start of the next one."""
        self.explicit = True
        self.pending.clear()
        if self.open is not None:
            self._close_now()
        self._open_step(self.now())

    def finish(self, failed: bool = False) -> None:
        """The session stops. What ran after the last boundary (evaluation, saving) is no step:
        its peak counts for the run's peak only. When the run failed, the step that was open is
        the step that failed: it is a step (the post-mortem names it)."""
        if self.pending and not self.optimizer_seen:
            self._flush_pending()  # backward-only steps and no optimizer: hand-written updates
        step, self.open = self.open, None
        if step is None:
            return
        if failed and not self.explicit and self.trained:
            self.open = step
            self._close_now()
            self.open = None
            return
        self.meter.boundary()
        if step.end_bytes is not None and not self.explicit:
            trailing = OpenStep(step.index, 0, 0.0, step.exact)
            self.meter.take_peak(trailing)
            self._close(step)
            self.meter.outside_steps(trailing)
        else:
            self.meter.take_peak(step)
            self.meter.outside_steps(step)

    # -- mechanics -----------------------------------------------------------------------------
    def _open_step(self, now: float, start_bytes: int | None = None) -> None:
        index = self.next_index
        self.next_index += 1
        exact = self.meter.open_window(index)
        start = self.meter.boundary() if start_bytes is None else start_bytes
        self.open = OpenStep(index, start, now, exact)

    def _close_now(self) -> None:
        step, self.open = self.open, None
        step.end_bytes = self.meter.boundary()
        self.meter.take_peak(step)
        step.end_time = self.now()
        self._close(step)

    def _close(self, step: OpenStep) -> None:
        self.last_stepped = frozenset(step.stepped) if step.stepped else None
        self.meter.close(step)

    def _merge_pending(self) -> None:
        """The first optimizer step: backward-only steps before it were micro-batches of step 0."""
        if not self.pending or self.open is None:
            return
        first, step = self.pending[0], self.open
        for held in self.pending[1:] + [step]:
            if held.peak > first.peak:
                first.peak, first.peak_by_category = held.peak, held.peak_by_category
                first.estimated_peak = held.estimated_peak
            first.exact = first.exact and held.exact
        step.index, step.start_bytes, step.start_time = first.index, first.start_bytes, first.start_time
        step.peak, step.peak_by_category, step.exact = first.peak, first.peak_by_category, first.exact
        step.estimated_peak = first.estimated_peak
        self.next_index = step.index + 1
        self.meter.renumber(step.index)
        self.pending.clear()

    def _flush_pending(self) -> None:
        pending, self.pending = self.pending, []
        for step in pending:
            self._close(step)
