"""The C heap as the measure of CPU steps the per-op view skips: rationed readings, calibrated
against the exact ledger.

The heap holds the tensors' storages and what else the process keeps there; on watched steps the
difference between the heap and the ledger (the offset) is learnt, and on the others the heap
minus that offset is the tensors' total. Two things can make it useless or costly:
- what else is on the heap moves more than the tensors do (tiny tensors beside numpy arrays or
  gym objects): then the heap is not used (`unreliable`);
- a reading walks glibc's free lists: well under a microsecond on a tidy heap, 18 ms on one
  holding 100,000 freed chunks (a corpus of Python bytes, partly dropped), and read at every step
  boundary that turned a 1.6 ms step into 140 ms. So the readings are rationed: all of them
  together take at most READ_SHARE of the run's time (after a first READ_ALLOWANCE_S). Between
  readings the total is the last reading plus what the known tensors changed since.
"""
from __future__ import annotations

import time

from . import malloc

READ_SHARE = 0.01
READ_ALLOWANCE_S = 0.02
NOISE_BYTES = 64 << 10  # heap movement beyond the tensors' that still says something about them
JUDGED_FROM_STEP = 2


class Heap:
    def __init__(self) -> None:
        self.offset: int | None = None  # heap bytes beyond the ledger's, once calibrated
        self.unreliable = False  # the heap moves more than the tensors: not used
        self.noise = 0  # how far the heap beyond the tensors moved within a watched step
        self.seconds = 0.0  # all readings together
        self.reads = self.skipped = 0
        self._started = time.perf_counter()
        self._window = (1 << 62, -(1 << 62))  # least and most offset seen in this window
        self._compiled = False  # torch.compile compiled in this window
        self._last: int | None = None  # the last reading, and the known bytes then
        self._last_known = 0
        self._first: tuple[int, int] | None = None  # (step, offset) of the first judged reading
        self.drift = 0  # bytes a step the heap beyond the tensors grew by while every op was watched

    def read(self) -> int | None:
        """A reading, or None when the readings have used up their share of the run (or glibc's
        `mallinfo2` is missing)."""
        start = time.perf_counter()
        if self.seconds > READ_SHARE * (start - self._started) + READ_ALLOWANCE_S:
            self.skipped += 1
            return None
        heap = malloc.heap_bytes()
        self.seconds += time.perf_counter() - start
        self.reads += 1
        return heap

    def total(self, known: int) -> int | None:
        """The tensors' total: read now, or where the readings are rationed, the last reading plus
        what the `known` tensors (the ledger's, and gradients) changed since; never below `known`,
        as the heap's noise can make the difference small. None before calibration."""
        if self.offset is None:
            return None
        heap = self.read()
        if heap is not None:
            self._last, self._last_known = heap, known
        elif self._last is not None:
            heap = self._last + known - self._last_known
        return None if heap is None else max(known, heap - self.offset)

    # -- calibration, on watched windows -------------------------------------------------------
    def new_window(self) -> None:
        self._window = (1 << 62, -(1 << 62))
        self._compiled = False

    def compiled(self) -> None:
        """`torch.compile` compiled something: this window's movement says nothing of the program's."""
        self._compiled = True

    def calibrate(self, offset: int, step: int, peak: int) -> None:
        """The heap beyond the ledger at a point of a watched window of `step`. When it moves
        within the window by more than the tensors do (`peak`: the ledger's), the heap says
        nothing about them: stop using it. The first two steps, where PyTorch initializes its own
        buffers lazily, and windows in which `torch.compile` compiled (its code generation moves
        the heap, once) only update the offset."""
        low, high = self._window = (min(self._window[0], offset), max(self._window[1], offset))
        judged = step >= JUDGED_FROM_STEP and not self._compiled
        if judged:
            self.noise = max(self.noise, high - low)
            # Growth from step to step (host memory that is no tensor storage): the default mode's
            # totals will count it as tensors.
            # The window's lowest offset, where its own temporaries weigh least.
            if self._first is None or self._first[0] == step:
                self._first = (step, low)
            else:
                self.drift = max(0, (low - self._first[1]) // (step - self._first[0]))
        if judged and high - low > max(NOISE_BYTES, peak // 2):
            self.unreliable = True
            self.offset = None
        elif not self.unreliable:
            self.offset = offset
