"""`find_batch_size(fn)` and `@auto_batch_size`: the search in-process, on real PyTorch training.

The device is the CPU (also on a machine with a GPU) with oomdoctor's simulated capacity: a real
`torch.OutOfMemoryError` is raised when live tensors would pass it, exactly as on a GPU of that size.
"""
from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

import oomdoctor
from oomdoctor.batch import auto_batch_size, find_batch_size
from oomdoctor.errors import BadInput, NothingFits

MIB = 1024 * 1024


def train(batch_size: int, steps: int = 1000, log: list | None = None) -> float:
    """A whole training run: stopped by the search after its first steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(steps):
        x, y = torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if log is not None:
            log.append(batch_size)
        optimizer.step()
    return loss.item()


def fits(batch_size: int, capacity: int) -> bool:
    """Independent check: two steps of `train` under the simulated capacity."""
    try:
        with oomdoctor.track(capacity=capacity, device="cpu", quiet=True):
            train(batch_size, steps=2)
    except torch.OutOfMemoryError:
        return False
    return True


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage reachable in this process, each storage once."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor):  # type(): no attribute lookups on lazy proxies
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@pytest.fixture(scope="module")
def searched():
    """One search of `train` in 2 MiB from a current size that does not fit (4096), with what it
    ran and the live tensor bytes around it."""
    log: list[int] = []
    before = live_tensor_bytes()
    result = find_batch_size(lambda b: train(b, log=log), capacity=2 * MIB, steps=2, device="cpu", start=4096)
    return result, log, before, live_tensor_bytes()


def test_finds_the_exact_largest_batch_size_in_a_few_trials(searched):
    result = searched[0]
    best = result.max_batch_size
    assert fits(best, 2 * MIB) and not fits(best + 1, 2 * MIB)
    assert result.measured_trials <= 6
    assert result.trials[0].batch_size == 4096 and not result.trials[0].fits
    assert result.recommended_batch_size < best
    assert result.trial(best).fits and result.trial(best).source == "measured"


def test_each_trial_stops_after_its_steps(searched):
    # GIVEN a function that would train for 1000 steps: every trial that fits ran 2 of them
    result, log = searched[:2]
    for trial in result.trials:
        if trial.fits and trial.source == "measured":
            assert log.count(trial.batch_size) == 2


def test_the_memory_of_failed_trials_is_given_back(searched):
    # Measured: bytes of all live tensor storages (gc scan), before and after a search in which
    # trials ran out of memory half-way through a step, with their tensors in the traceback.
    result, _, before, after = searched
    assert any(not t.fits and t.source == "measured" for t in result.trials)
    assert after == before


def test_an_error_other_than_out_of_memory_is_raised_unchanged():
    def broken(batch_size: int) -> float:
        if batch_size > 64:
            raise ValueError("labels and logits disagree")
        return train(batch_size)

    with pytest.raises(ValueError, match="labels and logits disagree"):
        find_batch_size(broken, capacity=2 * MIB, device="cpu")


def test_nothing_fitting_says_what_was_live():
    with pytest.raises(NothingFits) as caught:
        find_batch_size(train, capacity=64 * 1024, device="cpu")
    message = str(caught.value)
    assert message.startswith("even batch size 1 does not fit in 64.00 KiB; live at the failure:")
    assert caught.value.exit_code == 1


def test_the_cpu_needs_a_capacity_to_search_against():
    with pytest.raises(BadInput, match="capacity="):
        find_batch_size(train, device="cpu")


def test_auto_batch_size_trains_at_the_recommended_size():
    calls: list[int] = []

    @auto_batch_size(capacity=2 * MIB, device="cpu")
    def run(batch_size: int, steps: int) -> int:
        calls.append(batch_size)
        train(batch_size, steps=steps)
        return batch_size

    used = run(steps=3)
    assert used == run.batch_size == run.result.recommended_batch_size
    assert calls[-1] == used  # the full run came last, after the trials
    assert run(steps=3) == used and calls.count(used) >= 2  # later calls reuse the answer, no new search


def test_auto_batch_size_retries_smaller_when_the_full_run_runs_out():
    # GIVEN a run whose evaluation, after training, holds 32 KiB per sample: more memory than the
    # trials' first steps needed. Under `track(capacity=...)` the trials join the session and fit
    # or not under its capacity, and so does the full run.
    @auto_batch_size(low=16, high=64)
    def run(batch_size: int) -> int:
        train(batch_size, steps=3)
        logits = torch.randn(batch_size, 8192)
        return logits.shape[0]

    with oomdoctor.track(capacity=int(1.5 * MIB), device="cpu", quiet=True):
        used = run()
    # THEN the first full run ran out of memory and a smaller size finished it
    assert run.result.max_batch_size == 64
    assert used == run.batch_size < run.result.recommended_batch_size


def test_progress_is_a_line_per_trial_on_stderr_unless_quiet(capfd):
    result = find_batch_size(train, capacity=2 * MIB, device="cpu", high=64)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("oomdoctor: batch size ")]
    assert len(lines) == result.measured_trials
    assert lines[-1].startswith("oomdoctor: batch size 64: fits, peak ") and "samples/s" in lines[-1]
    find_batch_size(train, capacity=2 * MIB, device="cpu", high=64, quiet=True)
    assert "oomdoctor: batch size" not in capfd.readouterr().err


def test_on_a_terminal_progress_is_a_live_line_naming_the_running_trial():
    # GIVEN a real pseudo-terminal as the progress stream
    import os

    from oomdoctor.batch.progress import SearchProgress
    from oomdoctor.batch.search import Trial

    master, slave = os.openpty()
    with os.fdopen(slave, "w") as stream, SearchProgress(stream=stream) as progress:
        progress.wrap(lambda b: Trial(b, True, 1000 * b, 0.5, step_seconds=0.01))(7)
    chunks = []
    while True:  # all the terminal received: the writer side is closed, reading ends with EIO
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    output = b"".join(chunks).decode(errors="replace")
    # THEN the running trial was shown live, and its outcome stays as a line
    assert "trial 1, batch size 7" in output
    assert "oomdoctor: batch size 7: fits, peak 6.84 KiB, 700 samples/s (0.5 s)" in output


def test_two_sizes_moments_predict_a_third_sizes_peak_exactly():
    # GIVEN the same training at three batch sizes, each with its moments recorded (the bytes at
    # each local peak of the run, in program order)
    from oomdoctor.batch.curves import Point, fit
    from oomdoctor.batch.moments import PeakMoments

    def measure(batch_size: int) -> Point:
        with oomdoctor.track(capacity=64 * MIB, device="cpu", quiet=True) as session, PeakMoments() as moments:
            train(batch_size, steps=2)
        return Point(batch_size, session.report().peak_bytes, tuple(moments.values))

    small, medium, large = measure(2), measure(40), measure(700)
    # THEN the same program makes the same moments, and their lines through two sizes give the
    # third size's peak to the byte, though the peak moved from one moment to another
    assert len(small.moments) == len(medium.moments) == len(large.moments) > 2
    assert max(small.moments) == small.peak and max(large.moments) == large.peak
    assert small.moments.index(small.peak) != large.moments.index(large.peak)
    assert fit([small, medium], bent=False).peak(700) == large.peak


def test_moments_are_recorded_for_code_without_modules():
    # GIVEN training written with bare tensors (no nn.Module): attached at the first optimizer step
    from oomdoctor.batch.moments import PeakMoments

    def bare(batch_size: int) -> list[int]:
        torch.manual_seed(0)
        w = torch.randn(64, 10, requires_grad=True)
        optimizer = torch.optim.SGD([w], lr=0.1, momentum=0.9)
        with oomdoctor.track(capacity=8 * MIB, device="cpu", quiet=True), PeakMoments() as moments:
            for _ in range(3):
                x = torch.randn(batch_size, 64)
                loss = (x @ w).relu().sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return moments.values

    small, large = bare(8), bare(512)
    # THEN both sizes give the same moments, and the larger ones hold more
    assert len(small) == len(large) > 0 and max(large) > max(small)
