"""In-process batch-size search: `find_batch_size(fn)` and the `@auto_batch_size` decorator.

Contract: `fn(batch_size)` trains at that batch size (builds or reuses its model, optimizer and
data). Each trial runs `fn` inside `oomdoctor.track(capacity=..., quiet=True)` and stops it after
`steps` optimizer steps, so `fn` may be a whole training run. A trial that raises an out-of-memory
error (`oomdoctor.oom.is_oom`) does not fit; any other exception is re-raised unchanged. After every
trial the memory it used is given back: the exception's traceback (which holds the failed call's
tensors) is dropped first, then `gc.collect()` and, on CUDA, `empty_cache()`.

Inside a running session (`oomdoctor run`, an outer `track()`) trials join it: fits and OOMs are
exact, but there is no peak of a trial alone to fit, so the search doubles and bisects.
"""
from __future__ import annotations

import functools
import gc
import time
from typing import Any, Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..errors import BadInput, NothingFits
from ..oom import is_oom
from ..sizes import format_bytes, parse_size
from .moments import PeakMoments
from .progress import SearchProgress
from .search import DEFAULT_HIGH, DEFAULT_MARGIN, BatchResult, Trial, search

DEFAULT_STEPS = 2  # the second step carries the optimizer state created lazily at the first


class _TrialDone(BaseException):
    """Ends a trial after its steps. A BaseException, so the user's `except Exception` lets it by."""


def find_batch_size(
    fn: Callable[[int], Any],
    *,
    start: int | None = None,
    low: int = 1,
    high: int | None = None,
    capacity: int | str | None = None,
    steps: int = DEFAULT_STEPS,
    margin: float = DEFAULT_MARGIN,
    device: str | None = None,
    quiet: bool = False,
) -> BatchResult:
    """The largest batch size in [low, high] for which `fn(batch_size)` fits in memory.

    `capacity`: bytes or a size such as "2GiB"; on CPU it is simulated (an OOM is raised past it),
    on CUDA the default is the device's memory. `device`: whose memory (default: CUDA when there
    is a GPU, else the CPU). `start`: the first size to try (e.g. the current one). `margin`:
    share of the capacity the recommendation keeps free. `quiet`: no progress on stderr (a live
    line on a terminal, else a line per trial). Returns a `BatchResult`
    (`.max_batch_size`, `.recommended_batch_size`, `.trials`); raises `NothingFits` when even
    `low` does not fit.
    """
    if steps < 1:
        raise BadInput(f"steps must be at least 1, got {steps}")
    size = None if capacity is None else parse_size(capacity)
    from ..session import Session

    active = Session.current()
    joined = active is not None
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    if size is None and not on_cuda and not (joined and active.capacity):
        raise BadInput("no GPU memory to search: give capacity= (e.g. \"2GiB\") for a simulated device")
    failures: dict[int, Any] = {}

    def trial(batch_size: int) -> Trial:
        result, report = _run_trial(fn, batch_size, size, device, steps, joined)
        if not result.fits:
            failures[batch_size] = report
        return result

    with SearchProgress(quiet) as progress:
        result = search(progress.wrap(trial), low=low, high=DEFAULT_HIGH if high is None else high,
                        capacity=None if joined else size, start=start, margin=margin)
    if result.max_batch_size is None:
        raise NothingFits(_nothing_fits(low, result.capacity_bytes, failures.get(low)))
    return result


def auto_batch_size(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorate `fn(batch_size, *args, **kwargs)`: calls run it at the recommended batch size.

    The first call searches (trials of `steps` steps each, options as `find_batch_size`), then runs
    `fn` in full at the recommended size; an out-of-memory error there (longer inputs than in the
    trials, say) retries with a size that keeps another 10 % of the memory free, down to `low`.
    `wrapper.result` is the search's `BatchResult`, `wrapper.batch_size` the size in use.
    Bare (`@auto_batch_size`) or with options (`@auto_batch_size(capacity="8GiB")`).
    """
    if fn is None:
        return lambda f: auto_batch_size(f, **options)
    low = options.get("low", 1)
    margin = options.get("margin", DEFAULT_MARGIN)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if wrapper.result is None:
            wrapper.result = find_batch_size(lambda b: fn(b, *args, **kwargs), **options)
            wrapper.batch_size = wrapper.result.recommended_batch_size
        kept = 1 - margin
        while True:
            try:
                return fn(wrapper.batch_size, *args, **kwargs)
            except Exception as exc:
                if not is_oom(exc) or wrapper.batch_size <= low:
                    raise
            _release()  # out of the except block: its traceback no longer holds the tensors
            kept *= 0.9
            smaller = wrapper.result.recommended_for(1 - kept)
            wrapper.batch_size = max(low, min(wrapper.batch_size - 1, smaller))

    wrapper.result = None  # type: ignore[attr-defined]
    wrapper.batch_size = None  # type: ignore[attr-defined]
    return wrapper


def _run_trial(fn: Callable[[int], Any], batch_size: int, capacity: int | None, device: str | None, steps: int,
               joined: bool) -> tuple[Trial, Any]:
    """Run `fn(batch_size)` for `steps` optimizer steps under a session: (Trial, its Report)."""
    import oomdoctor

    done = {"steps": 0}

    def count(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # A post hook, registered after the session's: the session has closed this step's books.
        done["steps"] += 1
        if done["steps"] >= steps:
            raise _TrialDone()

    fits = True
    session = handle = None
    moments = PeakMoments()
    started = time.perf_counter()
    try:
        with oomdoctor.track(capacity=capacity, device=device, quiet=True) as session, moments:
            handle = register_optimizer_step_post_hook(count)  # after the session's own hooks
            fn(batch_size)
    except _TrialDone:
        pass
    except Exception as exc:
        if not is_oom(exc):
            raise
        fits = False
    finally:
        if handle is not None:
            handle.remove()
    seconds = round(time.perf_counter() - started, 3)
    _release()  # outside the except block, so the failed call's frames are gone
    if joined:  # the session's peak is the whole run's: nothing of this trial alone to fit
        return Trial(batch_size, fits, None, seconds), None
    report = session.report()
    # On CUDA a capacity caps reserved memory: fit against its peak where the report has one.
    peak = report.aggregates.get("reserved_peak_bytes") or report.peak_bytes
    steps = report.steps
    warm = steps[-1].duration_s if len(steps) >= 2 else None  # the first step pays for lazy setup
    return Trial(batch_size, fits, peak, seconds, capacity_bytes=report.device.capacity_bytes,
                 moments=tuple(moments.values) if fits else (), step_seconds=warm), report


def _release() -> None:
    gc.collect()
    if not torch.cuda.is_available():
        return
    try:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    except Exception:  # a CPU-only build or a device in a bad state: nothing to give back
        pass


def _nothing_fits(low: int, capacity: int | None, report: Any) -> str:
    where = f" in {format_bytes(capacity)}" if capacity else ""
    message = f"even batch size {low} does not fit{where}"
    if report is None:
        return message
    parts = [f"{name.replace('_', ' ')} {format_bytes(n)}" for name, n in report.peak_by_category.items() if n]
    return f"{message}; live at the failure: {', '.join(parts) or format_bytes(report.peak_bytes)}"
