"""pytest plugin: the `oomdoctor` fixture, to fail a test when a training loop leaks memory.

    def test_training_does_not_leak(oomdoctor):
        with oomdoctor.steps():                 # yields the Session; each optimizer step is a step
            train(model, loader, steps=10)
        oomdoctor.assert_no_leak()              # tolerance: assert_no_leak(max_growth_bytes="64KiB")
        oomdoctor.assert_peak_below("256MiB")

`assert_no_leak` fails, naming what it saw, when the report holds a leak finding (`retained-graph`,
`memory-growth`, `missing-no-grad`) or when end-of-step memory grew after the warm-up steps by more
than `max_growth_bytes`. On CPU the block is watched op by op (`exact=True`), so that every step's
end-of-step bytes are exact. Inside a session that already runs (`oomdoctor run -m pytest`) the
block joins it: its own steps are judged, with the findings of the whole run.

Registered through the `pytest11` entry point `oomdoctor` (`-p no:oomdoctor` turns it off).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Iterable, Iterator

import pytest

if TYPE_CHECKING:
    from .report.model import Report, Step
    from .session import Session

LEAK_KINDS = ("retained-graph", "memory-growth", "missing-no-grad")
SHOWN_STEPS = 12  # end-of-step bytes listed in a failure message: the first and the last ones


class LeakFound(AssertionError):
    """The block's memory is not back to the same level at the end of each step."""


class MemoryCheck:
    """What the `oomdoctor` fixture gives a test: run a block under a session, then assert."""

    def __init__(self) -> None:
        self.report: Report | None = None  # the block's report, once the block ended

    @contextlib.contextmanager
    def steps(self, *, exact: bool = True, capacity: int | str | None = None) -> Iterator[Session]:
        """Watch the block; each optimizer step is a step (or call `session.step()` where an
        iteration ends, in a loop without an optimizer)."""
        from .session import Session
        from .sizes import parse_size

        running = Session.current()
        if running is not None:
            seen = {s.index for s in running.report().steps}
            yield running
            report = running.report()
            own = [s for s in report.steps if s.index not in seen]
            self.report = dataclasses.replace(report, steps=own, steps_total=len(own))
            return
        session = Session(exact=exact, capacity=None if capacity is None else parse_size(capacity), quiet=True)
        session.start()
        try:
            yield session
        except BaseException as exc:
            self.report = session.stop(exc)
            raise
        self.report = session.stop()

    def assert_no_leak(self, *, max_growth_bytes: int | str = 0, warmup: int = 2, ignore: Iterable[str] = ()) -> None:
        """Fail when a leak finding exists (kinds in LEAK_KINDS, less `ignore`), or when end-of-step
        memory grew by more than `max_growth_bytes` from the first step after `warmup` to the last."""
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        report = self._finished()
        limit = _bytes(max_growth_bytes)
        judged = report.steps[warmup:]
        if len(judged) < 2:
            raise LeakFound(f"oomdoctor saw {len(report.steps)} step(s); judging growth needs at least "
                            f"{warmup + 2} (warmup={warmup} plus two): run more steps or lower warmup")
        growth = judged[-1].end_bytes - judged[0].end_bytes
        findings = [f for f in report.findings if f.kind in LEAK_KINDS and f.kind not in set(ignore)]
        if not findings and growth <= limit:
            return
        from .sizes import format_bytes

        lines = ["memory leaks across steps:"]
        if growth > limit:
            lines.append(f"  end-of-step memory grew by {format_bytes(growth)} from step {judged[0].index} "
                         f"to step {judged[-1].index} (allowed: {format_bytes(limit)})")
        for finding in findings:
            where = f" at {finding.location}" if finding.location else ""
            lines.append(f"  {finding.kind}: {finding.title}{where}")
            if finding.location and finding.location.code:
                lines.append(f"      {finding.location.code}")
            lines.append(f"      {finding.detail}")
            if finding.remedy:
                lines.append(f"      fix: {finding.remedy}")
        lines.append("end of each step:")
        lines += [f"  step {s.index:>4}  {format_bytes(s.end_bytes)}" if s else "  ..."
                  for s in _shown(report.steps)]
        raise LeakFound("\n".join(lines))

    def assert_peak_below(self, limit: int | str) -> None:
        """Fail when the block's peak memory passed `limit` (bytes, or a size such as "512MiB")."""
        __tracebackhide__ = True
        report = self._finished()
        limit_bytes = _bytes(limit)
        if report.peak_bytes <= limit_bytes:
            return
        from .sizes import format_bytes

        at = f" at step {report.peak_step}" if report.peak_step is not None else ""
        parts = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in report.peak_by_category.items() if v)
        raise AssertionError(f"peak memory {format_bytes(report.peak_bytes)}{at} is above "
                             f"{format_bytes(limit_bytes)}: {parts}")

    def _finished(self) -> Report:
        if self.report is None:
            raise RuntimeError("run the code first, inside `with oomdoctor.steps():`")
        return self.report


@pytest.fixture
def oomdoctor() -> MemoryCheck:
    """Run a block under oomdoctor (`with oomdoctor.steps():`), then `oomdoctor.assert_no_leak()`."""
    return MemoryCheck()


def _bytes(size: int | str) -> int:
    from .sizes import parse_size

    return 0 if size == 0 else parse_size(size)


def _shown(steps: list[Step]) -> list[Step | None]:
    """The steps a message lists: all of a short run, else the first and last ones around a gap."""
    if len(steps) <= SHOWN_STEPS:
        return list(steps)
    half = SHOWN_STEPS // 2
    return [*steps[:half], None, *steps[-half:]]
