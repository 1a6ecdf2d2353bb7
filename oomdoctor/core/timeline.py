"""What a session recorded, in bounded memory, for the detectors and the report.

A run of 100,000 steps keeps the first `HEAD` steps, the latest `TAIL` steps, running aggregates
and a thinned series of end-of-step bytes (every 2**k-th step, at most `SERIES` points) that the
growth detector fits. Probes add events (a retained graph, a wasted forward, an OOM) to `events`.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..report.model import Step

HEAD = 16
TAIL = 240
SERIES = 512


@dataclass
class Timeline:
    device_type: str = "cpu"
    capacity: int | None = None
    head: list[Step] = field(default_factory=list)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL))
    steps_total: int = 0
    peak_bytes: int = 0
    peak_step: int | None = None
    peak_by_category: dict[str, int] = field(default_factory=dict)
    peak_where: str | None = None  # where a peak outside any step happened ("after step 39")
    peak_estimated: bool = False  # the peak is an estimate (a step the per-op view skipped)
    unwatched_forwards: int = 0  # root forwards after the last step, not watched op by op
    series: list[tuple[int, int]] = field(default_factory=list)  # (step index, end bytes), thinned
    stride: int = 1
    events: list[dict[str, Any]] = field(default_factory=list)
    exception: dict[str, Any] | None = None  # filled when the run ended with an exception
    batch_size: int | None = None  # first dimension of the latest root forward's input
    reserved_peak: int = 0  # CUDA: the most memory the caching allocator reserved
    per_sample_bytes: float = 0.0  # an exact step's peak beyond parameters, gradients and state, per sample

    def add(self, step: Step) -> None:
        self.steps_total += 1
        if len(self.head) < HEAD:
            self.head.append(step)
        else:
            self.tail.append(step)
        if step.index % self.stride == 0:
            self.series.append((step.index, step.end_bytes))
            if len(self.series) >= SERIES:  # thin out: keep every other point, double the stride
                self.stride *= 2
                self.series = [p for p in self.series if p[0] % self.stride == 0]

    def note_peak(self, nbytes: int, by_category: dict[str, int], step: int | None,
                  where: str | None = None, estimated: bool = False) -> None:
        if nbytes > self.peak_bytes:
            self.peak_bytes = nbytes
            self.peak_step = step
            self.peak_by_category = dict(by_category)
            self.peak_where = where
            self.peak_estimated = estimated

    def steps(self) -> list[Step]:
        """The steps kept: the first ones, then the latest ones (indices may jump between)."""
        return self.head + list(self.tail)

    def add_event(self, kind: str, **data: Any) -> None:
        if len(self.events) < 1000:  # bounded: a probe that fires every step must dedupe itself
            self.events.append({"kind": kind, **data})
