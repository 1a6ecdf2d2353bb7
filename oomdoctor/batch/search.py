"""The batch-size search: the exact largest batch size that fits a memory capacity, in few trials.

Contract: `search(trial, low=, high=, capacity=, start=None, margin=) -> BatchResult`, where
`trial(b)` runs batch size `b` once and returns a measured `Trial` (fits or not, its peak bytes).
Only "does not fit" steers the search: an exception raised by `trial` is not an answer and goes
through untouched. The engine is pure: no torch, no processes, no clock.

Peak memory grows with the batch size as fixed + per_sample*b; where the peak moves from one phase
to another (the optimizer step at small batches, backward at large ones) it is the larger of two
such lines, and a few workloads add a b^2 term (a b x b similarity matrix). All of these are convex
in b, which the search relies on. A trial that recorded its moments (moments.py: the bytes live at
each local peak of the run, in program order) gives one such line per moment, so two trials
already show where the peak moves; every fit below is then the largest of the moments' fits
(curves.py). It measures, fits, predicts, then confirms:

1. measure `start` (or `low`). One point gives a size that still fits even if all of the peak grew
   as b^2: b*sqrt(capacity/peak). Measure there: a second point, far from the first.
2. Fit the line through the two largest sizes that fit, or the parabola through the three largest
   when the third is off that line by more than `TOLERANCE` (and the parabola bends up), and
   measure the largest size the fit says fits. Fits are exact rationals: a truly linear workload
   takes 3 measured trials, the two probes and this one.
3. Confirm. The next size is *predicted* not to fit, without running it, when the secant through
   the largest size that fits and a smaller one (a lower bound of the next peak, by convexity: of
   each moment's, so of their largest) puts it past the capacity by more than the error the fit
   just showed at the size it placed; otherwise it runs. With moments the smaller one is the
   smallest size (the longest base); for the run's peak alone, the next largest (the steepest).
4. When a fit promised a size that did not fit: while the points lie on one line, measure where
   even the most curved growth through the two largest still fits (a third point, to see the
   bend); once they bend, halve the bracket. From then on the line or the parabola is used,
   whichever did not just err in its direction (a parabola that erred means a kink: straight
   beyond it). Two trials in a row that did not fit where they were meant to: bisection, so a
   curve that fools every fit costs about a binary search, never a loop. Moments rounded to
   allocator blocks (multiples of 512 bytes) are the exception: their lines hold the kinks
   already and miss by a size or two, so halve the bracket for a long base, or try its top.

Without a capacity (none given, none reported by a trial) there is nothing to predict against:
doubling until a size does not fit, then bisection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .curves import Envelope, Point, fit, line, parabola, series, steepest
from .result import SCHEMA, BatchResult, Trial

__all__ = ["DEFAULT_HIGH", "DEFAULT_LOW", "DEFAULT_MARGIN", "SCHEMA", "BatchResult", "Trial", "search"]

DEFAULT_LOW = 1
DEFAULT_HIGH = 65536
DEFAULT_MARGIN = 0.10  # capacity share kept free in the recommendation: fragmentation, longer inputs
TOLERANCE = 0.01  # gap between a measured peak and the fit's prediction, relative, still "on the fit"
OVERSHOOTS_BEFORE_BISECTION = 2


def search(
    trial: Callable[[int], Trial],
    *,
    low: int = DEFAULT_LOW,
    high: int = DEFAULT_HIGH,
    capacity: int | None = None,
    start: int | None = None,
    margin: float = DEFAULT_MARGIN,
) -> BatchResult:
    """The exact largest batch size in [low, high] for which `trial` fits. See the module doc."""
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= low <= high, got low={low}, high={high}")
    if not 0 <= margin < 1:
        raise ValueError(f"margin is a share of the capacity in [0, 1), got {margin}")
    state = _Search(trial, low, high, capacity)
    first = low if start is None else min(max(start, low), high)
    state.measure(first)
    if state.largest_fit is None and first > low:
        state.measure(low)
    while state.largest_fit is not None and not state.settled():
        state.measure(state.next_size())
    result = BatchResult(state.largest_fit, None, state.capacity, margin, low, high, state.trials,
                         state.curve(), state.fit_error)
    result.recommended_batch_size = result.recommended_for(margin)
    return result


@dataclass
class _Placement:
    """Why the next trial runs where it does, to judge the fit by its outcome."""

    curve: Envelope | None  # what predicted its peak; None for a one-point bound or bisection
    expects_fit: bool
    kind: str  # "fit" (the fit's largest size), "bound" (fits under the most curved growth), "top" (of an
    # all but closed bracket), "search"


class _Search:
    """The bracket (largest size that fits, smallest that does not) and the measured peaks."""

    def __init__(self, trial: Callable[[int], Trial], low: int, high: int, capacity: int | None):
        self.run = trial
        self.low, self.high = low, high
        self.capacity = capacity
        self.trials: list[Trial] = []
        self.points: dict[int, Point] = {}  # batch size -> what was measured, for the sizes that fit
        self.largest_fit: int | None = None
        self.smallest_oom: int | None = None
        self.fit_error = 0.0
        self._placement: _Placement | None = None
        self._gap: float | None = None  # bytes between the latest trial's peak and its fit's prediction
        self._overshoots = 0  # trials in a row that did not fit where they were meant to
        self._prefer_bent: bool | None = None  # None: the parabola when the points bend
        self._crept = False  # the latest trial was the fit's size, and it fitted

    # -- measuring ------------------------------------------------------------------------------
    def measure(self, b: int) -> None:
        placement, self._placement = self._placement, None
        result = self.run(b)
        self._crept = placement is not None and placement.kind == "fit" and result.fits
        if result.batch_size != b or result.source != "measured":
            raise ValueError(f"trial({b}) must return the measured Trial of batch size {b}")
        self.trials.append(result)
        if self.capacity is None and result.capacity_bytes:
            self.capacity = result.capacity_bytes
        if result.fits:
            self.points[b] = Point(b, int(result.peak_bytes or 0), tuple(result.moments))
            self.largest_fit = max(self.largest_fit or b, b)
            self._overshoots = 0
        else:
            self.smallest_oom = min(self.smallest_oom or b, b)
            self._overshoots += placement is None or placement.expects_fit
        self._gap = None
        if placement is not None and placement.curve is not None:
            self._judge(placement, b, result.fits)

    def _judge(self, placement: _Placement, b: int, fits: bool) -> None:
        """How far the fit was off; which fit to trust next."""
        expected = float(placement.curve.peak(b))
        if fits:
            gap = abs(expected - self.points[b].peak)
            relative = gap / max(self.points[b].peak, 1)
            if relative <= TOLERANCE:
                self._gap = gap
            if placement.kind == "fit":
                self.fit_error = max(self.fit_error, relative)
        if placement.kind != "fit":
            return
        low_by_far = not fits or self.points[b].peak > expected * (1 + TOLERANCE)
        # An OOM where rounded moments' lines promised room is rounding, not a bend (step 4).
        rounding = not fits and self._rounding()
        if placement.curve.model == "linear" and low_by_far and not rounding:
            self._prefer_bent = True  # the line promised too much: the points bend
        elif placement.curve.model == "quadratic" and (low_by_far or self.points[b].peak < expected * (1 - TOLERANCE)):
            self._prefer_bent = False  # the parabola erred: a kink, straight beyond it

    # -- deciding -------------------------------------------------------------------------------
    def settled(self) -> bool:
        lo = self.largest_fit
        if lo == self.high or self.smallest_oom == lo + 1:
            return True
        if self._gap is None:
            return False
        # Each moment's bytes are convex in the batch size, so the secant through the largest size
        # that fits and a smaller one, extended by one, is a lower bound of the next size's peak:
        # past the capacity by more than the fit's error, it cannot fit. Moments lie on lines: the
        # smallest size, whose secant rounding (allocator blocks) tilts least; the run's peak alone
        # bends at kinks: the next largest, whose secant is steepest.
        sizes = sorted(self.points)
        other = sizes[0] if self._moments_fitted(sizes[0]) else sizes[-2]
        over = fit([self.points[other], self.points[lo]], bent=False).peak(lo + 1)
        allowance = self._gap
        if other == sizes[0] and _rounded(self.points[lo]):
            # Moments made of rounded blocks are staircases, not lines: a secant can overshoot
            # the next size by a block per tensor. Keep half a sample's bytes to spare.
            allowance = max(allowance, float(over - self.points[lo].peak) / 2)
        if float(over) - self.capacity > allowance:
            self.trials.append(Trial(lo + 1, False, math.ceil(over), None, "predicted"))
            return True
        return False

    def next_size(self) -> int:
        lo, hi = self.largest_fit, self._open_top()
        if self.capacity is None:  # nothing to predict against
            return self._place(2 * lo if self.smallest_oom is None else (lo + hi + 1) // 2)
        if self._overshoots >= OVERSHOOTS_BEFORE_BISECTION:
            return self._place((lo + hi + 1) // 2)
        points = [(b, self.points[b].peak) for b in sorted(self.points)[-3:]]
        if len(points) == 1:
            bound = lo * math.sqrt(self.capacity / max(self.points[lo].peak, 1))
            return self._place(math.floor(bound), expects_fit=math.floor(bound) > lo, kind="bound")
        curve = self.curve()
        size = curve.largest_fitting(self.capacity, lo, self.high)
        if self._crept and self.smallest_oom is not None and hi <= lo + 2 and self._rounding():
            # The fit's size fitted, yet the next is not ruled out, and the bracket is all but
            # closed: rounding tilts the moments' lines by a size or two, and the fit would creep
            # up one by one. Its top settles it when it fits.
            return self._place(hi, curve, kind="top")
        if size <= hi:
            return self._place(size, curve, kind="fit")
        # The fit promised a size that did not fit (step 4 of the module doc). Where the moments
        # were fitted and are rounded, the kinks are in the fit already and what is left is the
        # rounding (allocator blocks), which tilts a line through close sizes: measure halfway, a
        # long base for the next fit; from a long base already, the error is a size or two.
        # Exact moments that overshot bend: as without moments.
        if self._rounding():
            base = sorted(self.points)[-2]
            if lo - base >= hi - lo:  # a long base: the fit is off by a size or two, try the top
                return self._place(hi, curve, kind="top")
            return self._place((lo + hi + 1) // 2)
        if len(points) == 2 or parabola(*points).quadratic <= 0:
            curve = steepest(*points[-2:])
            size = curve.largest_fitting(self.capacity, lo, self.high)
            if size <= hi:
                return self._place(size, curve, kind="bound")
        return self._place((lo + hi + 1) // 2)

    def _moments_fitted(self, other: int | None = None) -> bool:
        """Do the largest size that fits and `other` (default: the next largest) have moments to fit?"""
        sizes = sorted(self.points)
        pair = [self.points[sizes[-2] if other is None else other], self.points[sizes[-1]]]
        return len({len(p.moments) for p in pair}) == 1 and bool(pair[0].moments)

    def _rounding(self) -> bool:
        """Are the fitted moments rounded (allocator blocks): lines that may be off by a block or two?"""
        return self._moments_fitted() and _rounded(self.points[self.largest_fit])

    def _open_top(self) -> int:
        """The largest size not yet known to be too large."""
        return (self.smallest_oom or self.high + 1) - 1

    def _place(self, size: int, curve: Envelope | None = None, *, expects_fit: bool = True, kind: str = "search") -> int:
        size = min(max(size, self.largest_fit + 1), self._open_top())
        if curve is not None:
            expects_fit = curve.peak(size) <= self.capacity
        self._placement = _Placement(curve, expects_fit, kind)
        return size

    def curve(self) -> Envelope | None:
        """The lines through the two largest sizes that fit, or the parabolas through the three
        largest (see the module doc, steps 2 and 4)."""
        points = list(self.points.values())
        if len(points) < 2:
            return None
        straight = fit(points, bent=False)
        if len(points) >= 3:
            bent = fit(points, bent=True)
            if bent.quadratic > 0:  # only what bends up: a concave fit would promise ever more room
                if self._prefer_bent is None and self._moments_fitted():
                    if _bends(sorted(points, key=lambda p: p.batch_size)[-3:]):
                        return bent
                elif self._prefer_bent is None:
                    b, peak = sorted((p.batch_size, p.peak) for p in points)[-3]
                    below = fit(points, bent=False, valid_from=b)  # the same lines, down to b
                    if abs(float(below.peak(b)) - peak) > TOLERANCE * max(peak, 1):
                        return bent
                elif self._prefer_bent:
                    return bent
        return straight


def _rounded(point: Point) -> bool:
    """Every recorded byte count a multiple of 512: sizes as the CUDA caching allocator rounds them."""
    return all(v % 512 == 0 for v in (point.peak, *point.moments))


def _bends(points: list[Point]) -> bool:
    """Do three sizes' moments bend: is the middle one below the chords of the outer two (each
    moment's line through them) by more than 1 % of a sample's bytes, or half a sample's where
    sizes are rounded? Moments are exact lines otherwise, so any more is a b^2 term, however
    small next to the fixed part."""
    low, middle, high = points
    pieces = [line((low.batch_size, a), (high.batch_size, c)) for a, _, c in series(points, peak=False)]
    chords = Envelope(pieces)  # moments only: their largest, the peak, bends at every kink
    sample = (high.peak - low.peak) / (high.batch_size - low.batch_size)
    share = 0.5 if _rounded(middle) else 0.01
    return float(chords.peak(middle.batch_size)) - max(middle.moments) > share * sample
