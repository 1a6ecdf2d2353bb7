"""Progress of a batch-size search on stderr, while trials run.

Contract: `SearchProgress(quiet=False, stream=sys.stderr)` wraps a trial function:
`progress.wrap(trial)` returns one that announces each trial as it starts and reports it when it
ends. On a terminal that is one live line (rich: spinner, trial number, batch size, seconds so
far), and a line per finished trial stays above it; elsewhere (a log, CI, a pipe) a plain line
per finished trial. `quiet` prints nothing. `close()` ends the live line; also a context manager.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, TextIO

from ..sizes import format_bytes
from .search import Trial


class SearchProgress:
    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.count = 0
        self._live: Any = None
        self._task: Any = None

    def __enter__(self) -> SearchProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def wrap(self, trial: Callable[[int], Trial]) -> Callable[[int], Trial]:
        def traced(batch_size: int) -> Trial:
            self.start(batch_size)
            result = trial(batch_size)
            self.done(result)
            return result

        return traced

    def start(self, batch_size: int) -> None:
        self.count += 1
        if self.quiet or not _is_terminal(self.stream):
            return
        if self._live is None:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            console = Console(file=self.stream, highlight=False)
            self._live = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                  console=console, transient=True)
            self._live.start()
            self._task = self._live.add_task("")
        self._live.reset(self._task, description=f"oomdoctor: trial {self.count}, batch size {batch_size}")

    def done(self, trial: Trial) -> None:
        if self.quiet:
            return
        line = describe(trial)
        if self._live is not None:
            self._live.console.print(line, markup=False)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def describe(trial: Trial) -> str:
    outcome = f"fits, peak {format_bytes(trial.peak_bytes)}" if trial.fits else "out of memory"
    rate = trial.samples_per_second
    speed = f", {rate:,.0f} samples/s" if rate else ""
    seconds = "" if trial.seconds is None else f" ({trial.seconds:.1f} s)"
    return f"oomdoctor: batch size {trial.batch_size}: {outcome}{speed}{seconds}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
