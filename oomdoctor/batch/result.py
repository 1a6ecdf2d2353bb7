"""What a batch-size search found: its trials, the answer, the recommendation, the fastest size.

Contract: `Trial` is one batch size, measured (run) or predicted (decided by the fitted memory
curve); `BatchResult` holds the trials, the largest size that fits, a recommendation that keeps a
margin of the capacity free, the size that trains the most samples per second when it is not the
largest, and `to_dict()` (`oomdoctor.batch/1`: fields are only ever added). Pure data: no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from .curves import Curve, Envelope

SCHEMA = "oomdoctor.batch/1"
FASTER_BY = 0.10  # a smaller size must beat the largest's samples/s by this share: step times are noisy


@dataclass
class Trial:
    """One batch size, run (`measured`) or decided by the fitted memory curve (`predicted`)."""

    batch_size: int
    fits: bool
    peak_bytes: int | None  # measured: the run's peak (for an OOM, what was live when it failed)
    seconds: float | None = None  # wall time of a measured trial
    source: str = "measured"  # "measured" | "predicted"
    capacity_bytes: int | None = None  # the device's capacity, when the trial reports one
    moments: tuple[int, ...] = ()  # bytes live at each local peak of the run (moments.py), when recorded
    step_seconds: float | None = None  # a warm step's duration (the last step), to compare speeds

    @property
    def samples_per_second(self) -> float | None:
        if not self.fits or self.source != "measured" or not self.step_seconds:
            return None
        return self.batch_size / self.step_seconds

    def to_dict(self) -> dict:
        rate = self.samples_per_second
        return {"batch_size": self.batch_size, "fits": self.fits, "peak_bytes": self.peak_bytes,
                "seconds": self.seconds, "source": self.source, "step_seconds": self.step_seconds,
                "samples_per_second": None if rate is None else round(rate, 3)}


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
    curve: Envelope | None = None
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
    def deciding_curve(self) -> Curve | None:
        """Of the fitted curves, the one that is largest just past the maximum: what limits it."""
        if self.curve is None:
            return None
        return self.curve.at((self.max_batch_size or self.low) + 1)

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

    def faster_than_largest(self) -> Trial | None:
        """The measured size below the maximum that trained the most samples per second, when that
        beats the maximum's own rate by `FASTER_BY` (memory is not all: past some size a larger
        batch only waits longer per step)."""
        largest = self.trial(self.max_batch_size) if self.max_batch_size is not None else None
        if largest is None or not largest.samples_per_second:
            return None
        smaller = [t for t in self.trials if t.samples_per_second and t.batch_size < largest.batch_size]
        best = max(smaller, key=lambda t: t.samples_per_second, default=None)
        if best is not None and best.samples_per_second > largest.samples_per_second * (1 + FASTER_BY):
            return best
        return None

    def to_dict(self) -> dict:
        prediction = None
        if self.curve is not None:
            curve = self.deciding_curve
            prediction = {
                "model": self.curve.model,
                "fixed_bytes": round(float(curve.fixed)),
                "per_sample_bytes": round(float(curve.per_sample), 3),
                "quadratic_bytes": round(float(curve.quadratic), 6),
                "fit_error": round(self.fit_error, 6),
                "moments": len(self.curve.pieces),  # the curves whose largest is the prediction
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
            "fastest": self._fastest_dict(),
        }

    def _fastest_dict(self) -> dict | None:
        faster = self.faster_than_largest()
        if faster is None:
            return None
        largest = self.trial(self.max_batch_size).samples_per_second
        return {"batch_size": faster.batch_size, "samples_per_second": round(faster.samples_per_second, 3),
                "largest_samples_per_second": round(largest, 3),
                "speedup": round(faster.samples_per_second / largest, 3)}
