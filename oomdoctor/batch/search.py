"""The batch-size search: the exact largest batch size that fits a memory capacity, in few trials.

Contract: `search(trial, low=, high=, capacity=, start=None, margin=) -> BatchResult`, where
`trial(b)` runs batch size `b` once and returns a measured `Trial` (fits or not, its peak bytes).
Only "does not fit" steers the search: an exception raised by `trial` is not an answer and goes
through untouched. The engine is pure: no torch, no processes, no clock.

Peak memory grows with the batch size as fixed + per_sample*b; where the peak moves from one phase
to another (the optimizer step at small batches, backward at large ones) it is the larger of two
such lines, and a few workloads add a b^2 term (a b x b similarity matrix). All of these are convex
in b, which the search relies on. It measures, fits, predicts, then confirms:

1. measure `start` (or `low`). One point gives a size that still fits even if all of the peak grew
   as b^2: b*sqrt(capacity/peak). Measure there: a second point, far from the first.
2. Fit the line through the two largest sizes that fit, or the parabola through the three largest
   when the third is off that line by more than `TOLERANCE` (and the parabola bends up), and
   measure the largest size the fit says fits. Fits are exact rationals: a truly linear workload
   takes 3 measured trials, the two probes and this one.
3. Confirm. The next size is *predicted* not to fit, without running it, when the secant through
   the two largest sizes that fit (a lower bound of the next peak, by convexity) puts it past the
   capacity by more than the error the fit just showed at the size it placed; otherwise it runs.
4. When a fit promised a size that did not fit: while the points lie on one line, measure where
   even the most curved growth through the two largest still fits (a third point, to see the
   bend); once they bend, halve the bracket. From then on the line or the parabola is used,
   whichever did not just err in its direction (a parabola that erred means a kink: straight
   beyond it). Two trials in a row that did not fit where they were meant to: bisection, so a
   curve that fools every fit costs about a binary search, never a loop.

Without a capacity (none given, none reported by a trial) there is nothing to predict against:
doubling until a size does not fit, then bisection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

SCHEMA = "oomdoctor.batch/1"
DEFAULT_LOW = 1
DEFAULT_HIGH = 65536
DEFAULT_MARGIN = 0.10  # capacity share kept free in the recommendation: fragmentation, longer inputs
TOLERANCE = 0.01  # gap between a measured peak and the fit's prediction, relative, still "on the fit"
OVERSHOOTS_BEFORE_BISECTION = 2


@dataclass
class Trial:
    """One batch size, run (`measured`) or decided by the fitted memory curve (`predicted`)."""

    batch_size: int
    fits: bool
    peak_bytes: int | None  # measured: the run's peak (for an OOM, what was live when it failed)
    seconds: float | None = None  # wall time of a measured trial
    source: str = "measured"  # "measured" | "predicted"
    capacity_bytes: int | None = None  # the device's capacity, when the trial reports one

    def to_dict(self) -> dict:
        return {"batch_size": self.batch_size, "fits": self.fits, "peak_bytes": self.peak_bytes,
                "seconds": self.seconds, "source": self.source}


@dataclass(frozen=True)
class Curve:
    """peak(b) = fixed + per_sample*b + quadratic*b^2, in exact rationals."""

    fixed: Fraction
    per_sample: Fraction
    quadratic: Fraction = Fraction(0)

    @property
    def model(self) -> str:
        return "quadratic" if self.quadratic else "linear"

    def peak(self, b: int) -> Fraction:
        return self.fixed + self.per_sample * b + self.quadratic * b * b

    def largest_fitting(self, budget: float | Fraction, low: int, high: int) -> int:
        """The largest b in [low, high] with peak(b) <= budget; low - 1 when there is none.

        The curve is convex, so the sizes under the budget are an interval; `low` is a size that
        was measured to fit, so within [low, high] they are a prefix and bisection finds its end.
        """
        budget = Fraction(budget)
        if self.peak(low) > budget:
            return low - 1
        while low < high:
            mid = (low + high + 1) // 2
            if self.peak(mid) <= budget:
                low = mid
            else:
                high = mid - 1
        return low


def line(p: tuple[int, int], q: tuple[int, int]) -> Curve:
    per_sample = Fraction(q[1] - p[1], q[0] - p[0])
    return Curve(p[1] - per_sample * p[0], per_sample)


def parabola(p: tuple[int, int], q: tuple[int, int], r: tuple[int, int]) -> Curve:
    """Through three points (divided differences)."""
    s1, s2 = Fraction(q[1] - p[1], q[0] - p[0]), Fraction(r[1] - q[1], r[0] - q[0])
    quadratic = (s2 - s1) / (r[0] - p[0])
    per_sample = s1 - quadratic * (p[0] + q[0])
    return Curve(p[1] - per_sample * p[0] - quadratic * p[0] * p[0], per_sample, quadratic)


def steepest(p: tuple[int, int], q: tuple[int, int]) -> Curve:
    """The most curved growth with fixed, per-sample and b^2 terms >= 0 through two points: any
    such workload fits at least up to where this one does."""
    quadratic = Fraction(q[1] - p[1], q[0] ** 2 - p[0] ** 2)
    fixed = p[1] - quadratic * p[0] ** 2
    if fixed >= 0:
        return Curve(fixed, Fraction(0), quadratic)
    # No fixed part: peak = per_sample*b + quadratic*b^2 through both points.
    quadratic = (Fraction(q[1], q[0]) - Fraction(p[1], p[0])) / (q[0] - p[0])
    return Curve(Fraction(0), Fraction(p[1], p[0]) - quadratic * p[0], quadratic)


@dataclass
class BatchResult:
    """What the search found. `max_batch_size` is None when even `low` does not fit."""

    max_batch_size: int | None
    recommended_batch_size: int | None
    capacity_bytes: int | None
    margin: float
    low: int
    high: int
    trials: list[Trial] = field(default_factory=list)
    curve: Curve | None = None
    fit_error: float = 0.0  # largest relative gap seen between the fit's prediction and a measurement

    @property
    def measured_trials(self) -> int:
        return sum(t.source == "measured" for t in self.trials)

    @property
    def all_fit(self) -> bool:
        """Every size up to `high` fits: `high` is the answer, and more may fit."""
        return self.max_batch_size == self.high

    def trial(self, batch_size: int) -> Trial | None:
        return next((t for t in self.trials if t.batch_size == batch_size), None)

    def peak_at(self, batch_size: int) -> int | None:
        """Measured peak at `batch_size` when it was run, else the fitted curve's prediction."""
        t = self.trial(batch_size)
        if t is not None and t.fits and t.source == "measured":
            return t.peak_bytes
        return int(self.curve.peak(batch_size)) if self.curve is not None else None

    @property
    def usable_bytes(self) -> int | None:
        """The capacity, or less where the size after the maximum did not fit below it (on CUDA
        the cap holds the allocator's reserved bytes, and fragmentation leaves less for tensors).
        Without a capacity, the maximum's own peak."""
        fitting = [t for t in self.trials if t.fits and t.source == "measured"]
        if not fitting:
            return None
        ceiling = self.capacity_bytes or max(fitting, key=lambda t: t.batch_size).peak_bytes
        if ceiling is not None and self.curve is not None and not self.all_fit:
            ceiling = min(ceiling, math.floor(self.curve.peak(self.max_batch_size + 1)))
        return ceiling

    def recommended_for(self, margin: float) -> int | None:
        """The largest size whose peak stays `margin` (a share) below the usable bytes, never
        below `low` nor above the maximum; without any measured peak, `margin` below the maximum
        size itself."""
        if self.max_batch_size is None:
            return None
        fitting = sorted((t for t in self.trials if t.fits and t.source == "measured"), key=lambda t: t.batch_size)
        ceiling = self.usable_bytes
        if ceiling is None:
            return max(self.low, math.floor(self.max_batch_size * (1 - margin)))
        budget = Fraction(ceiling) * (1 - Fraction(margin).limit_denominator(10**6))
        if self.curve is not None:
            size = self.curve.largest_fitting(budget, self.low, self.max_batch_size)
        else:  # one measured point: the largest measured size within the budget
            size = max((t.batch_size for t in fitting if t.peak_bytes <= budget), default=self.low)
        return max(self.low, size)

    def to_dict(self) -> dict:
        curve = self.curve
        prediction = None if curve is None else {
            "model": curve.model,
            "fixed_bytes": round(float(curve.fixed)),
            "per_sample_bytes": round(float(curve.per_sample), 3),
            "quadratic_bytes": round(float(curve.quadratic), 6),
            "fit_error": round(self.fit_error, 6),
        }
        return {
            "schema": SCHEMA,
            "max_batch_size": self.max_batch_size,
            "recommended_batch_size": self.recommended_batch_size,
            "all_fit": self.all_fit,
            "capacity_bytes": self.capacity_bytes,
            "usable_bytes": self.usable_bytes,
            "margin": self.margin,
            "margin_bytes": None if self.capacity_bytes is None else round(self.capacity_bytes * self.margin),
            "low": self.low,
            "high": self.high,
            "measured_trials": self.measured_trials,
            "trials": [t.to_dict() for t in self.trials],
            "prediction": prediction,
        }


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

    curve: Curve | None  # what predicted its peak; None for a one-point bound or bisection
    expects_fit: bool
    kind: str  # "fit" (the fit's largest size), "bound" (fits under the most curved growth), "search"


class _Search:
    """The bracket (largest size that fits, smallest that does not) and the measured peaks."""

    def __init__(self, trial: Callable[[int], Trial], low: int, high: int, capacity: int | None):
        self.run = trial
        self.low, self.high = low, high
        self.capacity = capacity
        self.trials: list[Trial] = []
        self.peaks: dict[int, int] = {}  # batch size -> measured peak, for the sizes that fit
        self.largest_fit: int | None = None
        self.smallest_oom: int | None = None
        self.fit_error = 0.0
        self._placement: _Placement | None = None
        self._gap: float | None = None  # bytes between the latest trial's peak and its fit's prediction
        self._overshoots = 0  # trials in a row that did not fit where they were meant to
        self._prefer_bent: bool | None = None  # None: the parabola when the points bend

    # -- measuring ------------------------------------------------------------------------------
    def measure(self, b: int) -> None:
        placement, self._placement = self._placement, None
        result = self.run(b)
        if result.batch_size != b or result.source != "measured":
            raise ValueError(f"trial({b}) must return the measured Trial of batch size {b}")
        self.trials.append(result)
        if self.capacity is None and result.capacity_bytes:
            self.capacity = result.capacity_bytes
        if result.fits:
            self.peaks[b] = int(result.peak_bytes or 0)
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
            gap = abs(expected - self.peaks[b])
            relative = gap / max(self.peaks[b], 1)
            if relative <= TOLERANCE:
                self._gap = gap
            if placement.kind == "fit":
                self.fit_error = max(self.fit_error, relative)
        if placement.kind != "fit":
            return
        low_by_far = not fits or self.peaks[b] > expected * (1 + TOLERANCE)
        if placement.curve.model == "linear" and low_by_far:
            self._prefer_bent = True  # the line promised too much: the points bend
        elif placement.curve.model == "quadratic" and (low_by_far or self.peaks[b] < expected * (1 - TOLERANCE)):
            self._prefer_bent = False  # the parabola erred: a kink, straight beyond it

    # -- deciding -------------------------------------------------------------------------------
    def settled(self) -> bool:
        lo = self.largest_fit
        if lo == self.high or self.smallest_oom == lo + 1:
            return True
        if self._gap is None:
            return False
        # Peak is convex in the batch size, so the secant through the two largest sizes that fit,
        # extended by one, is a lower bound of the next size's peak: past the capacity by more
        # than the fit's error, it cannot fit.
        prev = sorted(self.peaks)[-2]
        over = self.peaks[lo] + Fraction(self.peaks[lo] - self.peaks[prev], lo - prev)
        if float(over) - self.capacity > self._gap:
            self.trials.append(Trial(lo + 1, False, math.ceil(over), None, "predicted"))
            return True
        return False

    def next_size(self) -> int:
        lo, hi = self.largest_fit, self._open_top()
        if self.capacity is None:  # nothing to predict against
            return self._place(2 * lo if self.smallest_oom is None else (lo + hi + 1) // 2)
        if self._overshoots >= OVERSHOOTS_BEFORE_BISECTION:
            return self._place((lo + hi + 1) // 2)
        points = sorted(self.peaks.items())[-3:]
        if len(points) == 1:
            bound = lo * math.sqrt(self.capacity / self.peaks[lo])
            return self._place(math.floor(bound), expects_fit=math.floor(bound) > lo, kind="bound")
        curve = self.curve()
        size = curve.largest_fitting(self.capacity, lo, self.high)
        if size <= hi:
            return self._place(size, curve, kind="fit")
        # The fit promised a size that did not fit (step 4 of the module doc).
        if len(points) == 2 or parabola(*points).quadratic <= 0:
            curve = steepest(*points[-2:])
            size = curve.largest_fitting(self.capacity, lo, self.high)
            if size <= hi:
                return self._place(size, curve, kind="bound")
        return self._place((lo + hi + 1) // 2)

    def _open_top(self) -> int:
        """The largest size not yet known to be too large."""
        return (self.smallest_oom or self.high + 1) - 1

    def _place(self, size: int, curve: Curve | None = None, *, expects_fit: bool = True, kind: str = "search") -> int:
        size = min(max(size, self.largest_fit + 1), self._open_top())
        if curve is not None:
            expects_fit = curve.peak(size) <= self.capacity
        self._placement = _Placement(curve, expects_fit, kind)
        return size

    def curve(self) -> Curve | None:
        """The line through the two largest sizes that fit, or the parabola through the three
        largest (see the module doc, steps 2 and 4)."""
        points = sorted(self.peaks.items())[-3:]
        if len(points) < 2:
            return None
        straight = line(points[-2], points[-1])
        if len(points) == 3:
            bent = parabola(*points)
            if bent.quadratic > 0:  # a concave fit would promise ever more room
                if self._prefer_bent is None:
                    b, peak = points[0]
                    if abs(float(straight.peak(b)) - peak) > TOLERANCE * max(peak, 1):
                        return bent
                elif self._prefer_bent:
                    return bent
        return straight
