"""`oom` and `fragmentation`: the post-mortem of a run that ran out of memory.

Reads the exception the session recorded while the failed frames were alive: where it failed
(the innermost line of the user's own code), in which step and phase, what was live, the largest
live tensors, and on CUDA the allocator's reserved-but-free bytes.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any

import torch

from ...oom import oom_family
from ..remedies import Situation, rank
from ...report.model import Finding, Location, Remedy
from ...sizes import format_bytes
from ...core.timeline import Timeline

_OURS = (os.path.dirname(os.path.abspath(sys.modules["oomdoctor"].__file__)) + os.sep,
         os.path.dirname(torch.__file__) + os.sep)
_REQUESTED = re.compile(r"Tried to allocate ([0-9.]+) ?(bytes|B|KiB|MiB|GiB|TiB)", re.IGNORECASE)
_UNITS = {"bytes": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def detect(timeline: Timeline) -> list[Finding]:
    exc = timeline.exception
    if not exc or not (exc["type"] == "OutOfMemoryError" or oom_family(exc["message"])):
        return []
    requested = requested_bytes(exc["message"])
    allocator = exc.get("allocator") or {}
    reserved_free = allocator.get("reserved_bytes.all.current", 0) - allocator.get("allocated_bytes.all.current", 0)
    situation = Situation(
        by_category=exc["by_category"], capacity=timeline.capacity, batch_size=timeline.batch_size,
        phase=exc["phase"], requested=requested, reserved_unallocated=max(0, reserved_free),
        largest=exc.get("largest", []),
        per_sample_bytes=timeline.per_sample_bytes,
    )
    frame = user_frame(exc["frames"])
    where = f"step {exc['step']}" if exc.get("step") is not None else "the run"
    live = exc.get("live_bytes", 0)
    detail = (f"Asked for {format_bytes(requested)} with {format_bytes(live)} live"
              + (f" of {format_bytes(timeline.capacity)}" if timeline.capacity else "")
              + f" during the {exc['phase']} phase of {where}. Live by category: "
              + ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in exc["by_category"].items() if v)
              + "." + _largest_text(exc.get("largest", [])))
    findings = [Finding(
        kind="oom", severity="error",
        title=f"Out of memory in the {exc['phase']} phase of {where}",
        detail=detail, location=frame, bytes=requested,
        remedy="Apply the first remedy below; `oomdoctor batch` finds the largest batch that fits.",
        remedies=rank(situation),
        evidence={"message": exc["message"], "step": exc.get("step"), "phase": exc["phase"],
                  "live_bytes": live, "by_category": exc["by_category"], "largest": exc.get("largest", []),
                  "batch_size": timeline.batch_size, "allocator": allocator or None},
    )]
    if requested and reserved_free >= requested:
        findings.append(Finding(
            kind="fragmentation", severity="error",
            title="Fragmentation, not size, caused the OOM",
            detail=(f"{format_bytes(reserved_free)} was reserved by PyTorch but free, more than the "
                    f"{format_bytes(requested)} asked for, yet in pieces too small "
                    f"({format_bytes(allocator.get('inactive_split_bytes.all.current', 0))} in split blocks, "
                    f"{allocator.get('num_alloc_retries', 0)} allocation retries)."),
            location=frame, bytes=reserved_free,
            remedy="Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, or keep tensor sizes steady "
                   "(pad variable-length batches to a few bucket sizes).",
            remedies=[Remedy("PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", reserved_free)],
            evidence={"allocator": allocator},
        ))
    return findings


def requested_bytes(message: str) -> int | None:
    match = _REQUESTED.search(message)
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def user_frame(frames: list[dict[str, Any]]) -> Location | None:
    """The innermost frame of the user's own code (not torch, not oomdoctor, not the stdlib)."""
    for f in reversed(frames):
        name = f["file"]
        notebook_cell = name.startswith("<ipython-input-")
        if name.startswith(_OURS) or name.startswith("<") and not notebook_cell or "site-packages" in name \
                or "/lib/python" in name:
            continue
        return Location(name, f["line"], f["function"], f.get("code"))
    return None


def _largest_text(largest: list[dict[str, Any]]) -> str:
    lines = [f"{format_bytes(t['bytes'])} {t['category']}" + (f" from {t['site']['file']}:{t['site']['line']}"
                                                             if t.get("site") else "")
             for t in largest[:3]]
    return (" Largest live tensors: " + "; ".join(lines) + ".") if lines else ""
