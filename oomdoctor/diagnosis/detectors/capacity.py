"""`near-capacity`: the run's peak came within a few percent of the device's capacity.

One step of variation (a longer sequence, a bigger last batch, fragmentation) is then enough for
an OOM, so it is worth a warning even when the run succeeded. The peak it quotes is the report's
own (the header's), with its step or where it happened, and marked `~` when it is an estimate.
"""
from __future__ import annotations

from ...report.model import Finding, Remedy
from ...sizes import format_bytes
from ...core.timeline import Timeline

NEAR = 0.90  # peak above this share of capacity


def detect(timeline: Timeline) -> list[Finding]:
    capacity = timeline.capacity
    if not capacity or timeline.exception is not None or timeline.peak_bytes < NEAR * capacity:
        return []
    share = timeline.peak_bytes / capacity
    headroom = capacity - timeline.peak_bytes
    if timeline.peak_step is not None:
        where = f" at step {timeline.peak_step}"
    else:
        where = f" ({timeline.peak_where})" if timeline.peak_where else ""
    approx = "~" if timeline.peak_estimated else ""
    estimate = (" (an estimate: the per-op view did not watch that step; --exact measures it)"
                if timeline.peak_estimated else "")
    return [
        Finding(
            kind="near-capacity",
            severity="warning",
            title=f"Peak memory is {share:.0%} of capacity",
            detail=(
                f"The peak{where} was {approx}{format_bytes(timeline.peak_bytes)}{estimate} of "
                f"{format_bytes(capacity)}; only {approx}{format_bytes(headroom)} is left for larger "
                "inputs, fragmentation or another process."
            ),
            bytes=timeline.peak_bytes,
            remedy="Keep at least 10 % headroom: find the batch size that fits with `oomdoctor batch`.",
            remedies=[Remedy("Use the batch size `oomdoctor batch` recommends (10 % margin)")],
            evidence={"peak_bytes": timeline.peak_bytes, "capacity_bytes": capacity},
        )
    ]
