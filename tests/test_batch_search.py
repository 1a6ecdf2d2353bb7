"""The batch-size search engine: exact answers in few trials, on synthetic memory curves.

The trial function is a memory model with a capacity (the algorithm is what is under test, not
the hardware): peak = fixed + per_sample*b (+ quadratic*b^2, or the larger of two lines where the
peak moves from the optimizer step to backward). A size fits when its peak is within capacity.
A device with `moments` also reports the bytes at each local peak of the run, as a real trial
under a simulated capacity does (moments.py); the peak is then the largest of them.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomdoctor.batch.search import DEFAULT_HIGH, SCHEMA, Trial, search

CASES = settings(max_examples=250, deadline=None, derandomize=True)


class Device:
    """A simulated device running a workload whose peak is `peak(b)`."""

    def __init__(self, peak, capacity: int | None, report_capacity: bool = False, moments=None, step=None):
        self.capacity, self.report_capacity, self.moments, self.step = capacity, report_capacity, moments, step
        self.peak = peak if moments is None else (lambda b: max(moments(b)))
        self.runs: list[int] = []

    def __call__(self, b: int) -> Trial:
        self.runs.append(b)
        need = self.peak(b)
        fits = need <= self.capacity
        moments = tuple(self.moments(b)) if self.moments is not None and fits else ()
        return Trial(b, fits, need if fits else self.capacity, 0.1,
                     capacity_bytes=self.capacity if self.report_capacity else None, moments=moments,
                     step_seconds=self.step(b) if self.step is not None and fits else None)

    def truth(self, low: int = 1, high: int = DEFAULT_HIGH) -> int | None:
        """The largest size that fits, by bisection on the model itself."""
        if self.peak(low) > self.capacity:
            return None
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.peak(mid) <= self.capacity else (low, mid - 1)
        return low


def linear(fixed: int, per_sample: int):
    return lambda b: fixed + per_sample * b


def quadratic(fixed: int, per_sample: int, quad: int):
    return lambda b: fixed + per_sample * b + quad * b * b


maxima = st.integers(1, DEFAULT_HIGH)  # the answer we plant
log_maxima = st.floats(0, math.log(DEFAULT_HIGH)).map(lambda x: max(1, int(math.exp(x))))


@CASES
@given(target=st.one_of(maxima, log_maxima), fixed=st.integers(0, 10**10), per_sample=st.integers(1, 10**8))
def test_linear_memory_gives_the_exact_maximum_in_at_most_three_trials(target, fixed, per_sample):
    # GIVEN peak = fixed + per_sample*b and a capacity whose exact answer is `target`
    device = Device(linear(fixed, per_sample), fixed + per_sample * target + per_sample // 2)
    # WHEN searching 1..65536
    result = search(device, capacity=device.capacity)
    # THEN the answer is exact and took two probes and one confirmation at most
    assert result.max_batch_size == device.truth() == min(target, DEFAULT_HIGH)
    assert result.measured_trials == len(device.runs) <= 3


@CASES
@given(target=log_maxima, fixed=st.integers(0, 10**10), share=st.sampled_from([0.01, 0.1, 0.5, 0.9, 1.0]),
       room=st.integers(10**6, 10**12))
def test_quadratic_memory_gives_the_exact_maximum_in_at_most_six_trials(target, fixed, share, room):
    # GIVEN a b^2 term (e.g. a b x b similarity matrix) taking `share` of the memory at the target
    quad = max(1, int(room * share / target**2))
    per_sample = int(room * (1 - share) / target)
    device = Device(quadratic(fixed, per_sample, quad), fixed + room)
    result = search(device, capacity=device.capacity)
    assert result.max_batch_size == device.truth()
    assert result.measured_trials <= 6


@CASES
@given(target=log_maxima, fixed=st.integers(0, 10**9), per_sample=st.integers(2, 10**7),
       flat=st.floats(0, 0.9), kink=st.floats(0, 1))
def test_a_peak_that_changes_phase_is_still_exact_and_never_costs_more_than_a_binary_search(
        target, fixed, per_sample, flat, kink):
    # GIVEN the optimizer step's peak (flat in b) dominating small batches and backward's (steep)
    # large ones: the larger of two lines, kinked anywhere below the answer
    at = max(1, int(target**kink))
    slow = int(per_sample * flat)
    device = Device(lambda b: max(fixed + (per_sample - slow) * at + slow * b, fixed + per_sample * b),
                    fixed + per_sample * target)
    result = search(device, capacity=device.capacity)
    assert result.max_batch_size == device.truth()
    assert result.measured_trials <= 2 + 17  # the probes, then at worst a binary search of 1..65536


@CASES
@given(target=log_maxima, fixed=st.integers(0, 10**10), share=st.sampled_from([0.01, 0.1, 0.5, 0.9, 1.0]),
       room=st.integers(10**6, 10**12))
def test_a_b_squared_term_in_the_moments_is_seen_however_small_next_to_the_fixed_part(target, fixed, share, room):
    # GIVEN backward's moment with a b x b matrix and a lower moment without, both reported
    quad = max(1, int(room * share / target**2))
    per_sample = int(room * (1 - share) / target)
    device = Device(None, fixed + room, moments=lambda b: (fixed + per_sample * b + quad * b * b,
                                                           fixed // 2 + per_sample * b))
    result = search(device, capacity=device.capacity)
    assert result.max_batch_size == device.truth()
    assert result.measured_trials <= 6


def phase_lines(fixed: int, per_sample: int, flat: float, at: int):
    """Bytes at the optimizer step's peak (weights-sized temporaries, a little per sample) and at
    backward's (activations): the larger is the run's peak, and it moves at `at`."""
    slow = int(per_sample * flat)
    return lambda b: (fixed + (per_sample - slow) * at + slow * b, fixed + per_sample * b)


@CASES
@given(target=log_maxima, fixed=st.integers(0, 10**9), per_sample=st.integers(2, 10**7),
       flat=st.floats(0, 0.9), kink=st.floats(0, 1.2), extra=st.integers(0, 4))
def test_a_kink_seen_in_the_moments_costs_no_extra_trial(target, fixed, per_sample, flat, kink, extra):
    # GIVEN the peak moving from the optimizer step to backward anywhere (also past the answer),
    # and a few lower moments (the end of forward, data loading), all reported by each trial
    at = max(1, int(target**kink))
    lines = phase_lines(fixed, per_sample, flat, at)
    device = Device(None, fixed + per_sample * target,
                    moments=lambda b: (*lines(b), *(fixed // (i + 2) + per_sample // (i + 2) * b for i in range(extra))))
    result = search(device, capacity=device.capacity)
    # THEN the answer is exact in the two probes and one confirmation
    assert result.max_batch_size == device.truth()
    assert result.measured_trials <= 3


@CASES
@given(target=log_maxima, fixed=st.integers(10**6, 10**10), per_tensor=st.integers(4096, 10**6),
       flat=st.floats(0, 0.9), kink=st.floats(0, 1.2), tensors=st.integers(1, 40), low=st.sampled_from([1, 1, 8]))
def test_kinks_and_allocator_rounding_together_stay_within_six_trials(target, fixed, per_tensor, flat, kink,
                                                                      tensors, low):
    # GIVEN each moment's bytes split over `tensors` tensors (of at least 4 KiB a sample), each
    # rounded up to 512 bytes as the CUDA caching allocator does: every moment is a staircase, and
    # the peak moves phase
    at, per_sample = max(1, int(target**kink)), per_tensor * tensors
    lines = phase_lines(fixed, per_sample, flat, at)

    def rounded(value: int) -> int:
        return sum(math.ceil(value / tensors / 512 + i / tensors) * 512 for i in range(tensors))

    device = Device(None, 0, moments=lambda b: tuple(rounded(v) for v in lines(b)))
    device.capacity = device.peak(target) + per_sample // 3
    result = search(device, capacity=device.capacity, low=min(low, target))
    assert result.max_batch_size == device.truth(low=min(low, target))
    assert result.measured_trials <= 6


@CASES
@given(target=log_maxima, fixed=st.integers(10**6, 10**10), tensors=st.integers(1, 100),
       per_tensor=st.integers(10**5, 10**7))
def test_allocator_rounding_does_not_break_exactness(target, fixed, tensors, per_tensor):
    # GIVEN every tensor rounded up to 512 bytes, as the CUDA caching allocator does: peaks are
    # a staircase, not a line
    def peak(b: int) -> int:
        return fixed + sum(math.ceil((per_tensor + i) * b / 512) * 512 for i in range(tensors))

    device = Device(peak, peak(target) + per_tensor // 3)
    result = search(device, capacity=device.capacity)
    assert result.max_batch_size == device.truth()
    assert result.measured_trials <= 6


def test_the_size_after_the_maximum_is_predicted_only_when_it_cannot_fit():
    device = Device(linear(10_000, 100), 10_000 + 100 * 700)
    result = search(device, capacity=device.capacity)
    predicted = [t for t in result.trials if t.source == "predicted"]
    assert [t.batch_size for t in predicted] == [701]
    assert not predicted[0].fits and predicted[0].peak_bytes > device.capacity and predicted[0].seconds is None
    assert 701 not in device.runs


def test_even_the_smallest_size_not_fitting_is_an_answer_after_one_trial():
    device = Device(linear(5_000, 10), 4_000)
    result = search(device, capacity=device.capacity)
    assert result.max_batch_size is None and result.recommended_batch_size is None
    assert device.runs == [1]


def test_a_start_that_does_not_fit_falls_back_to_the_minimum():
    device = Device(linear(5_000, 10), 4_000)
    result = search(device, capacity=device.capacity, start=64, low=2)
    assert result.max_batch_size is None
    assert device.runs == [64, 2]


def test_a_start_that_fits_is_the_first_trial():
    device = Device(linear(1_000, 10), 1_000 + 10 * 5000)
    result = search(device, capacity=device.capacity, start=256)
    assert device.runs[0] == 256 and result.max_batch_size == 5000


def test_everything_up_to_the_maximum_fitting_says_so():
    device = Device(linear(1_000, 10), 10**9)
    result = search(device, capacity=device.capacity, high=512)
    assert result.max_batch_size == 512 and result.all_fit
    assert result.to_dict()["all_fit"] is True
    assert len(device.runs) <= 2


def test_a_single_allowed_size():
    device = Device(linear(1_000, 10), 10**9)
    assert search(device, capacity=device.capacity, low=8, high=8).max_batch_size == 8
    assert device.runs == [8]


def test_an_error_that_is_not_out_of_memory_stops_the_search():
    # GIVEN a script that breaks at batch sizes above 100 for a reason other than memory
    runs = []

    def trial(b: int) -> Trial:
        runs.append(b)
        if b > 100:
            raise ValueError("shape mismatch")
        return Trial(b, True, 1_000 + b)

    # THEN the error reaches the caller, and is never taken for "does not fit"
    with pytest.raises(ValueError, match="shape mismatch"):
        search(trial, capacity=10**6)
    assert max(runs) > 100 and runs[-1] > 100


def test_the_capacity_can_come_from_the_trials():
    # GIVEN a GPU whose size the trials report (no --capacity given)
    device = Device(linear(2_000, 30), 2_000 + 30 * 1234, report_capacity=True)
    result = search(device, capacity=None)
    assert result.max_batch_size == 1234 and result.capacity_bytes == device.capacity
    assert result.measured_trials <= 3


@pytest.mark.parametrize("target", [1, 2, 3, 5, 100, 1000, 65535, 65536])
def test_without_any_capacity_doubling_and_bisection_are_still_exact(target):
    device = Device(linear(100, 10), 100 + 10 * target)
    result = search(device, capacity=None)
    assert result.max_batch_size == target
    assert result.measured_trials <= 2 * math.ceil(math.log2(target + 1)) + 1


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.25])
def test_the_recommendation_keeps_the_margin_free(margin):
    capacity = 1_000_000 + 700 * 1000
    device = Device(linear(1_000_000, 700), capacity)
    result = search(device, capacity=capacity, margin=margin)
    r = result.recommended_batch_size
    assert device.peak(r) <= capacity * (1 - margin) < device.peak(r + 1)
    assert r <= result.max_batch_size


def test_the_recommendation_never_goes_below_the_minimum():
    # GIVEN a fixed part that leaves less than the margin free even at the smallest size
    device = Device(linear(950, 1), 1_000)
    result = search(device, capacity=1_000, low=4, margin=0.1)
    assert result.max_batch_size == 50 and result.recommended_batch_size == 4


def test_a_smaller_size_that_trains_faster_per_sample_is_named_with_its_numbers():
    # GIVEN steps that slow down past ~1000 samples (caches overflow): per sample, the largest
    # size is not the fastest
    device = Device(linear(10_000, 100), 10_000 + 100 * 5000, step=lambda b: 0.01 + 1e-5 * b + 2e-9 * b * b)
    result = search(device, capacity=device.capacity, start=1000)
    largest = result.trial(result.max_batch_size)
    faster = result.faster_than_largest()
    # THEN the fastest measured size is named, with its rate and the largest's
    assert faster is not None and faster.batch_size < largest.batch_size
    assert faster.samples_per_second == max(t.samples_per_second for t in result.trials if t.samples_per_second)
    fastest = result.to_dict()["fastest"]
    assert fastest["batch_size"] == faster.batch_size
    assert fastest["speedup"] == pytest.approx(faster.samples_per_second / largest.samples_per_second, rel=1e-3)
    assert fastest["largest_samples_per_second"] == pytest.approx(largest.samples_per_second, rel=1e-3)


def test_no_faster_size_is_claimed_within_the_noise():
    # GIVEN steps whose time per sample barely changes: within 10 % the largest stays the advice
    device = Device(linear(10_000, 100), 10_000 + 100 * 5000, step=lambda b: 1e-5 * b + 0.001 * (b < 3000))
    result = search(device, capacity=device.capacity, start=1000)
    assert result.faster_than_largest() is None and result.to_dict()["fastest"] is None


def test_json_form():
    device = Device(quadratic(10_000, 100, 3), 10_000 + 100 * 300 + 3 * 300**2)
    data = search(device, capacity=device.capacity).to_dict()
    assert data["schema"] == SCHEMA
    assert data["max_batch_size"] == 300 and data["capacity_bytes"] == device.capacity
    assert set(data["trials"][0]) >= {"batch_size", "fits", "peak_bytes", "seconds", "source",
                                      "step_seconds", "samples_per_second"}
    assert {t["source"] for t in data["trials"]} <= {"measured", "predicted"}
    assert data["prediction"]["model"] == "quadratic"
    assert data["prediction"]["fixed_bytes"] == 10_000 and data["prediction"]["per_sample_bytes"] == 100
    assert data["prediction"]["quadratic_bytes"] == 3


@pytest.mark.parametrize("kwargs", [{"low": 0}, {"low": 10, "high": 5}, {"margin": 1.0}, {"margin": -0.1}])
def test_bad_bounds_are_refused(kwargs):
    with pytest.raises(ValueError):
        search(Device(linear(1, 1), 100), capacity=100, **kwargs)


def test_less_usable_memory_than_the_capacity_still_gives_the_exact_answer_and_a_real_margin():
    # GIVEN a GPU capped at `capacity` where allocator overhead leaves 13 % of it unusable for
    # tensors: sizes stop fitting well below the capacity the fit predicts against
    capacity = 2 * 2**30
    device = Device(linear(300 * 2**20, 72 * 1024), int(capacity * 0.87))
    result = search(device, capacity=capacity)
    # THEN the maximum is still exact (measured), in fewer trials than doubling and bisecting
    # (~2*log2(max)+1 = 29), and the recommendation keeps its margin below where memory really
    # ran out, not below the nominal capacity
    assert result.max_batch_size == device.truth()
    assert result.measured_trials <= 24
    assert result.usable_bytes <= device.capacity + 72 * 1024
    assert device.peak(result.recommended_batch_size) <= 0.9 * result.usable_bytes
