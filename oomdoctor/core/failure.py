"""How a run ended: the exception, where it happened and what was live then.

Recorded while the failed frames (and their tensors) are still alive; the OOM detector and the
report read it from `timeline.exception`.
"""
from __future__ import annotations

import os
import traceback
from typing import TYPE_CHECKING, Any

import torch

from ..diagnosis.failure_names import names_at_failure
from ..probes import cuda

if TYPE_CHECKING:
    from ..session import Session

_TORCH = os.path.dirname(torch.__file__)


def record(session: "Session", exc: BaseException) -> None:
    """Describe the failure into the timeline; at a CUDA OOM, also dump the allocator's history
    for pytorch.org/memory_viz."""
    from ..oom import is_oom

    session.timeline.exception = describe(session, exc)
    if not (session.on_cuda and session.history and is_oom(exc)):
        return
    try:
        cuda.dump_snapshot(session.snapshot_path)
    except Exception as err:
        session.warn(f"memory snapshot not written ({err!r})")
        return
    session.timeline.exception["snapshot"] = session.snapshot_path
    session.notes.append(f"memory snapshot at the OOM: {session.snapshot_path} "
                         "(open it at https://pytorch.org/memory_viz)")


def describe(session: "Session", exc: BaseException) -> dict[str, Any]:
    frames = [
        {"file": f.filename, "line": f.lineno, "function": f.name, "code": f.line}
        for f in traceback.extract_tb(exc.__traceback__)
    ]
    message = message_of(exc)
    phases = session.phases
    phase = _phase_of(frames) or (phases[-1] if phases else "other")
    largest = session.ledger.largest(5)
    holders = names_at_failure(exc.__traceback__, [e.ref() if e.ref is not None else None for e in largest])
    return {
        "type": type(exc).__name__,
        "message": message.splitlines()[0] if message else "",
        "frames": frames,
        "phase": phase,
        "step": session.step_index,
        "live_bytes": session.meter.current_bytes(),
        "by_category": session.meter.live_by_category("activations" if phase in ("forward", "backward") else "other"),
        "largest": [
            {"bytes": e.nbytes, "category": e.category, "step": e.step,
             "site": None if e.site is None else vars(e.site), "holders": names}
            for e, names in zip(largest, holders)
        ],
        "allocator": cuda.allocator_stats(session.device) if session.on_cuda else None,
    }


def message_of(exc: BaseException) -> str:
    """str(exc), also for an exception whose __str__ raises."""
    try:
        return str(exc).strip()
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def _phase_of(frames: list[dict[str, Any]]) -> str | None:
    """Where a failure happened, from its traceback (the phase stack is unwound by then)."""
    for frame in reversed(frames):
        name = frame["file"]
        if not name.startswith(_TORCH):
            continue
        if "/optim/" in name:
            return "optimizer"
        if "/autograd/" in name and "backward" in frame["function"]:
            return "backward"
        if "/nn/modules/" in name:
            return "forward"
    return None
