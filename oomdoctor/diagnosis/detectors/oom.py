"""`oom` and `fragmentation`: the post-mortem of a run that ran out of memory.

Reads the exception the session recorded while the failed frames were alive: where it failed
(the innermost line of the user's own code), in which step and phase, what was live, the largest
live tensors, and on CUDA the allocator's reserved-but-free bytes. Every number it shows is the
one recorded at the failure: the bytes asked for come from the simulated capacity's own record
when there is one (the message rounds them), and the remedies mark their estimates.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any

import torch

from ...oom import oom_family
from .. import forward_line
from ..forward_line import ForwardLine
from ..remedies import Situation, batch_that_fits, rank
from ...report.model import Finding, Location
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
    requested = _requested(timeline, exc["message"])
    allocator = exc.get("allocator") or {}
    reserved_free = allocator.get("reserved_bytes.all.current", 0) - allocator.get("allocated_bytes.all.current", 0)
    situation = Situation(
        by_category=exc["by_category"], capacity=timeline.capacity, batch_size=timeline.batch_size,
        phase=exc["phase"], requested=requested, reserved_unallocated=max(0, reserved_free),
        largest=exc.get("largest", []),
        per_sample_bytes=timeline.per_sample_bytes,
        forward=_forward(exc), device_type=timeline.device_type, step=exc.get("step"),
    )
    frame = user_frame(exc["frames"])
    where = f"step {exc['step']}" if exc.get("step") is not None else "the run"
    live = exc.get("live_bytes", 0)
    detail = (f"Asked for {format_bytes(requested)} with {format_bytes(live)} live"
              + (f" of {format_bytes(timeline.capacity)}" if timeline.capacity else "")
              + f" when it failed, in the {exc['phase']} phase of {where}. Live then, by category: "
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
                  "batch_size": timeline.batch_size, "allocator": allocator or None,
                  "batch_fit": _batch_fit(situation)},
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
            # The oom finding ranks expandable_segments among its remedies: not repeated here.
            remedy="Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (among the oom finding's remedies), "
                   "or keep tensor sizes steady (pad variable-length batches to a few bucket sizes).",
            evidence={"allocator": allocator},
        ))
    return findings


def _requested(timeline: Timeline, message: str) -> int | None:
    """The bytes asked for: exact from the simulated capacity's record, else from the message."""
    if "simulated by oomdoctor" in message:
        for event in reversed(timeline.events):
            if event["kind"] == "simulated-oom":
                return int(event["bytes"])
    return requested_bytes(message)


def _forward(exc: dict[str, Any]) -> ForwardLine | None:
    """The user's line that made the activations: on a failed forward, the innermost user frame
    that calls a module; otherwise the recorded site of the largest activations."""
    candidates = []
    if exc["phase"] == "forward":
        candidates += [(f["file"], f["line"], f["function"], f.get("code"))
                       for f in reversed(exc["frames"]) if _is_user(f["file"])]
    candidates += [(t["site"]["file"], t["site"]["line"], t["site"]["function"], None)
                   for t in exc.get("largest", []) if t.get("category") == "activations" and t.get("site")]
    for file, line, function, code in candidates:
        found = forward_line.at(file, line, function, code)
        if found is not None:
            return found
    return None


def _batch_fit(situation: Situation) -> dict[str, Any] | None:
    """The batch remedy's numbers, for JSON readers that check them."""
    fit = batch_that_fits(situation)
    if fit is None:
        return None
    return {"size": fit.size, "accumulation_steps": fit.steps, "largest_that_fits": fit.largest,
            "per_sample_bytes": fit.per_sample, "saves_bytes": fit.saves,
            "per_sample_measured": fit.cost.startswith("Measured")}


def requested_bytes(message: str) -> int | None:
    match = _REQUESTED.search(message)
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def user_frame(frames: list[dict[str, Any]]) -> Location | None:
    """The innermost frame of the user's own code (not torch, not oomdoctor, not the stdlib)."""
    for f in reversed(frames):
        if _is_user(f["file"]):
            return Location(f["file"], f["line"], f["function"], f.get("code"))
    return None


def _is_user(name: str) -> bool:
    notebook_cell = name.startswith("<ipython-input-")
    return not (name.startswith(_OURS) or name.startswith("<") and not notebook_cell or "site-packages" in name
                or "/lib/python" in name)


def _largest_text(largest: list[dict[str, Any]]) -> str:
    """The largest live tensors, equal ones counted once ("4 × 7.81 MiB activations from a.py:26")."""
    groups: dict[str, int] = {}
    for t in largest:
        site = f" from {os.path.basename(t['site']['file'])}:{t['site']['line']}" if t.get("site") else ""
        key = f"{format_bytes(t['bytes'])} {t['category'].replace('_', ' ')}{site}"
        groups[key] = groups.get(key, 0) + 1
    lines = [f"{n} × {key}" if n > 1 else key for key, n in list(groups.items())[:3]]
    return (" Largest live tensors: " + "; ".join(lines) + ".") if lines else ""
