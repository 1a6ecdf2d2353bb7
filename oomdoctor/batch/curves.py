"""Memory as a function of the batch size: the fits the batch-size search predicts with.

Contract: `Curve` is one term-wise function fixed + per_sample*b + quadratic*b^2 in exact
rationals; `Envelope` is the largest of several (one per moment of the run, see moments.py),
with `peak(b)`, `largest_fitting(budget, low, high)` and `at(b)` (the curve that is largest
there, for the report). `fit(points, bent)` builds an envelope through the two (line) or three
(parabola) largest measured sizes; `steepest(p, q)` is the most curved growth through two peaks.
Pure: no torch, no clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence


@dataclass(frozen=True)
class Curve:
    """peak(b) = fixed + per_sample*b + quadratic*b^2, in exact rationals."""

    fixed: Fraction
    per_sample: Fraction
    quadratic: Fraction = Fraction(0)

    def peak(self, b: int) -> Fraction:
        return self.fixed + self.per_sample * b + self.quadratic * b * b


@dataclass(frozen=True)
class Point:
    """A measured size that fits: its peak and, when recorded, the bytes at each moment."""

    batch_size: int
    peak: int
    moments: tuple[int, ...] = ()


class Envelope:
    """peak(b) = the largest of `pieces`. Each moment of a run is convex in b, so is their maximum."""

    def __init__(self, pieces: Sequence[Curve]):
        self.pieces = tuple(pieces)

    @property
    def model(self) -> str:
        return "quadratic" if any(c.quadratic for c in self.pieces) else "linear"

    @property
    def quadratic(self) -> Fraction:
        return max(c.quadratic for c in self.pieces)

    def peak(self, b: int) -> Fraction:
        return max(c.peak(b) for c in self.pieces)

    def at(self, b: int) -> Curve:
        return max(self.pieces, key=lambda c: c.peak(b))

    def largest_fitting(self, budget: float | Fraction, low: int, high: int) -> int:
        """The largest b in [low, high] with peak(b) <= budget; low - 1 when there is none.

        The envelope is convex, so the sizes under the budget are an interval; `low` is a size that
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


def steepest(p: tuple[int, int], q: tuple[int, int]) -> Envelope:
    """The most curved growth with fixed, per-sample and b^2 terms >= 0 through two points: any
    such workload fits at least up to where this one does."""
    quadratic = Fraction(q[1] - p[1], q[0] ** 2 - p[0] ** 2)
    fixed = p[1] - quadratic * p[0] ** 2
    if fixed >= 0:
        return Envelope([Curve(fixed, Fraction(0), quadratic)])
    # No fixed part: peak = per_sample*b + quadratic*b^2 through both points.
    quadratic = (Fraction(q[1], q[0]) - Fraction(p[1], p[0])) / (q[0] - p[0])
    return Envelope([Curve(Fraction(0), Fraction(p[1], p[0]) - quadratic * p[0], quadratic)])


def series(points: Sequence[Point], peak: bool = True) -> list[tuple[int, ...]]:
    """Values to fit, one tuple per series, a value per point: the run's peak (unless not `peak`),
    and each moment where every point recorded the same number of them (the same program, other
    sizes). Without moments, the peak alone."""
    values = [(p.peak,) for p in points]
    lengths = {len(p.moments) for p in points}
    if len(lengths) == 1 and lengths != {0}:
        values = [(p.peak, *p.moments) if peak else p.moments for p in points]
    return sorted(set(zip(*values)))  # the same values at every point: one curve


def fit(points: Sequence[Point], bent: bool, valid_from: int | None = None) -> Envelope:
    """The envelope through the two largest points (lines), or the three largest (parabolas,
    `bent`): one curve per series. A series that bends down keeps its line: a concave fit would
    promise ever more room. Where moments are fitted, parabolas leave the run's peak out: the
    largest of the moments bends at each kink, and a parabola through a kink bends the wrong way.
    Lines that never lead from `valid_from` on (default: the largest point) are left out: the
    envelope is exact from there only."""
    top = sorted(points, key=lambda p: p.batch_size)[-3 if bent else -2:]
    sizes = [p.batch_size for p in top]
    pieces = []
    for values in series(top, peak=not bent):
        xy = list(zip(sizes, values))
        curve = parabola(*xy) if bent else line(*xy)
        if curve.quadratic < 0:
            curve = line(*xy[-2:])
        pieces.append(curve)
    return Envelope(_prune(pieces, sizes[-1] if valid_from is None else valid_from))


def _prune(pieces: list[Curve], b: int) -> list[Curve]:
    """Drop lines that another one lies above from `b` on (higher at b, and no slower): they
    never decide a size past the measured ones."""
    if any(c.quadratic for c in pieces) or len(pieces) < 2:
        return pieces
    kept: list[Curve] = []
    # Steepest first; among equal slopes the highest: a line is dominated when an earlier one
    # (at least as steep) is at least as high at b.
    highest = None
    for curve in sorted(pieces, key=lambda c: (c.per_sample, c.peak(b)), reverse=True):
        value = curve.peak(b)
        if highest is None or value > highest:
            kept.append(curve)
            highest = value
    return kept
