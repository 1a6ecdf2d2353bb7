"""The CUDA side of a session: allocator statistics, allocation history, snapshots, NVML's view.

Every call is guarded: on CPU-only builds and older PyTorch versions the private APIs below are
missing, and the session goes on without what they give.
"""
from __future__ import annotations

import os
from typing import Any

import torch

HISTORY_ENTRIES = 100_000  # allocation events kept by the CUDA allocator's ring buffer


def allocated(index: int) -> tuple[int, int, int]:
    """(current allocated, peak allocated, peak reserved) bytes.

    `torch.cuda.memory_allocated()` flattens every allocator statistic in Python (hundreds of
    microseconds, several times per step): read the entries from the nested statistics instead.
    """
    try:
        stats = torch._C._cuda_memoryStats(index)
        current = stats["allocated_bytes"]["all"]
        return current["current"], current["peak"], stats["reserved_bytes"]["all"]["peak"]
    except (AttributeError, KeyError, TypeError):  # a private API: fall back to the public one
        return (torch.cuda.memory_allocated(index), torch.cuda.max_memory_allocated(index),
                torch.cuda.max_memory_reserved(index))


def allocator_stats(device: torch.device) -> dict[str, int] | None:
    """The allocator's view at a failure: what the fragmentation diagnosis reads."""
    try:
        stats = torch.cuda.memory_stats(device)
    except Exception:
        return None
    keys = ("allocated_bytes.all.current", "reserved_bytes.all.current", "inactive_split_bytes.all.current",
            "num_alloc_retries", "num_ooms", "requested_bytes.all.current")
    return {k: int(stats.get(k, 0)) for k in keys}


def start_history() -> None:
    """Record allocations with Python stacks (~2 us per allocation), on the allocating side only:
    the free-side stacks of context="all" double the cost. Raises where the API is missing."""
    torch.cuda.memory._record_memory_history(max_entries=HISTORY_ENTRIES, stacks="python", context="alloc")


def stop_history() -> None:
    torch.cuda.memory._record_memory_history(enabled=None)


def dump_snapshot(path: str) -> None:
    """A snapshot that https://pytorch.org/memory_viz opens."""
    torch.cuda.memory._dump_snapshot(path)


def snapshot_next_to(json_path: str | None) -> str:
    """Where an OOM's snapshot goes: beside the JSON report, else in the cwd."""
    if json_path:
        root, _ = os.path.splitext(json_path)
        return root + ".oom-snapshot.pickle"
    return f"oomdoctor-oom-snapshot-{os.getpid()}.pickle"


def install(session: Any) -> None:
    """Watch a CUDA device: its capacity (or the simulated one, as the per-process memory
    fraction), a fresh peak, and the allocation history when asked for."""
    index = session.device.index if session.device.index is not None else torch.cuda.current_device()
    session.device = session.meter.device = torch.device("cuda", index)
    total = torch.cuda.get_device_properties(index).total_memory
    session.timeline.capacity = session.capacity or total
    if session.capacity is not None:
        torch.cuda.set_per_process_memory_fraction(min(1.0, session.capacity / total), index)
        session.hooks.on_remove(lambda: torch.cuda.set_per_process_memory_fraction(1.0, index))
    torch.cuda.reset_peak_memory_stats(index)
    if session.history:
        try:
            start_history()
            session.hooks.on_remove(stop_history)
        except Exception as exc:  # private API: absent or changed in some versions
            session.warn(f"allocation history not recorded ({exc!r})")
            session.history = False


def device_view(device: torch.device, reserved_peak: int) -> tuple[dict[str, Any], str | None]:
    """PyTorch's reserved bytes beside what NVML sees in use, and the note explaining the gap."""
    from ..gpu.nvml import NoDriver, nvml_gap_note, read_gpus

    view: dict[str, Any] = {"torch_reserved_bytes": torch.cuda.memory_reserved(device),
                            "reserved_peak_bytes": reserved_peak}
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return view, None  # NVML numbers devices as the host does: no safe match
    try:
        _, gpus = read_gpus()
    except (NoDriver, Exception):
        return view, None
    gpu = next((g for g in gpus if g.index == device.index), None)
    if gpu is None:
        return view, None
    view["nvml_used_bytes"] = gpu.memory_used_bytes
    return view, nvml_gap_note(gpu.memory_used_bytes, view["torch_reserved_bytes"])
