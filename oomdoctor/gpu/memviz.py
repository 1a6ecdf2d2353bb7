"""Memory snapshots in PyTorch's format, for https://pytorch.org/memory_viz.

`write_snapshot` turns a CPU run's allocation trace into the same structure
`torch.cuda.memory._snapshot()` returns (addresses from the allocator model; CPU memory has no
caching allocator of its own), so the Active Memory Timeline shows it. `load_snapshot` reads one
back, or a real one from `torch.cuda.memory._dump_snapshot`, with an unpickler that refuses every
class: a snapshot is plain dicts, lists, strings and numbers, and a pickle that is not could run
code.
"""
from __future__ import annotations

import io
import pickle
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInput
from ..report.text import clean

if TYPE_CHECKING:  # the reader must not import torch (the recorder's module does)
    from ..probes.events import AllocationRecorder

MAX_SNAPSHOT_BYTES = 2**30  # a CUDA snapshot of a long trace is hundreds of MiB


def write_snapshot(recorder: AllocationRecorder, path: str | Path) -> None:
    trace = []
    for action, address, nbytes, site, time_us in recorder.trace or ():
        frames = [{"filename": site.file, "line": site.line, "name": site.function}] if site else []
        trace.append({"action": "alloc" if action == "alloc" else "free_completed", "addr": address,
                      "size": nbytes, "stream": 0, "time_us": time_us, "frames": frames})
    snapshot = {
        "segments": [],  # the allocator model's segments are not exported: the timeline is the point
        "device_traces": [trace],
        "allocator_settings": {"source": "oomdoctor CPU ledger (synthetic addresses)"},
    }
    Path(path).write_bytes(pickle.dumps(snapshot, protocol=4))


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a memory snapshot holds plain data only")


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Read a snapshot safely; anything else is a one-line BadInput."""
    path = Path(path)
    name = clean(path, 200)
    try:
        if path.is_dir():
            raise BadInput(f"{name} is a folder, not a memory snapshot")
        if not path.is_file():
            raise BadInput(f"{name} is not a regular file" if path.exists() else f"no such file: {name}")
        with path.open("rb") as handle:
            raw = handle.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {name}: {exc.strerror}") from None
    if len(raw) > MAX_SNAPSHOT_BYTES:
        raise BadInput(f"{name} is larger than {MAX_SNAPSHOT_BYTES >> 30} GiB")
    try:
        data = _PlainDataUnpickler(io.BytesIO(raw)).load()
    # No code runs (find_class refuses every class), but plain opcodes can still fail in many ways:
    # BUILD on a dict, a truncated stream, a stack underflow. Each is "not a snapshot".
    except Exception as exc:  # noqa: BLE001
        raise BadInput(f"{name} is not a memory snapshot: {clean(exc, 200)}") from None
    if not isinstance(data, dict) or "device_traces" not in data and "segments" not in data:
        raise BadInput(f"{name} is not a memory snapshot (no segments or device_traces)")
    return data


def summarize(snapshot: dict[str, Any], name: str = "snapshot") -> dict[str, Any]:
    """What a snapshot says at a glance: its segments (CUDA: reserved and allocated at the end),
    its trace (events, allocations, frees, the peak of live memory and what is live at the end),
    and the lines that allocated what is live at the end. Malformed parts are a BadInput."""
    segments = _list(snapshot.get("segments"), f"{name}: segments")
    reserved = allocated = 0
    for i, segment in enumerate(segments):
        where = f"{name}: segments[{i}]"
        reserved += _size(_dict(segment, where), "total_size", where)
        allocated += _size(segment, "allocated_size", where)
    events = [(f"{name}: device_traces[{d}][{i}]", e)
              for d, trace in enumerate(_list(snapshot.get("device_traces"), f"{name}: device_traces"))
              for i, e in enumerate(_list(trace, f"{name}: device_traces[{d}]"))]
    actions: Counter = Counter()
    for where, event in events:
        actions[_action(_dict(event, where), where)] += 1
    # CUDA traces say free_requested then free_completed; count a free once, when it completes.
    frees = ("free_completed",) if actions["free_completed"] else ("free_requested",)
    live: dict[Any, tuple[str, dict]] = {}
    live_bytes = peak = 0
    for where, event in events:
        action = event.get("action")
        if action in ("alloc", *frees):
            address = _int(event, "addr", where)
            if action == "alloc":
                live_bytes += _size(event, "size", where) - _size(live.get(address, ("", {}))[1], "size", where)
                live[address] = (where, event)
            elif address in live:
                live_bytes -= _size(live.pop(address)[1], "size", where)
            peak = max(peak, live_bytes)
    by_line: Counter = Counter()
    for where, event in live.values():
        by_line[_top_line(event, where)] += _size(event, "size", where)
    source = snapshot.get("allocator_settings")
    return {"segments": len(segments), "reserved_bytes": reserved, "allocated_bytes": allocated,
            "events": len(events), "allocations": actions["alloc"], "frees": sum(actions[a] for a in frees),
            "peak_live_bytes": peak, "live_in_trace_bytes": live_bytes, "top_lines": by_line.most_common(10),
            "source": clean(source.get("source"), 200) if isinstance(source, dict) and source.get("source") else None}


def _top_line(event: dict, where: str) -> str:
    """The innermost frame outside site-packages (the user's line), else the innermost frame."""
    frames = _list(event.get("frames"), f"{where}.frames")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise BadInput(f"{where}.frames[{i}] is not a frame")
    top = next((f for f in frames if "site-packages" not in str(f.get("filename", ""))), frames[0] if frames else None)
    return f"{clean(top.get('filename'), 300)}:{clean(top.get('line'), 20)}" if top else "(no stack)"


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadInput(f"{where} is not a list")
    return value


def _dict(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise BadInput(f"{where} is not a dict but {type(value).__name__}")
    return value


def _action(event: dict, where: str) -> str:
    action = event.get("action")
    if not isinstance(action, str):
        raise BadInput(f"{where}.action is not a string")
    return action


def _int(event: dict, key: str, where: str) -> int:
    value = event.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadInput(f"{where}.{key} is not an integer but {type(value).__name__}")
    if not -2**63 <= value < 2**64:  # addresses are unsigned 64-bit; sizes fit well within
        raise BadInput(f"{where}.{key} is out of range")
    return value


def _size(event: dict, key: str, where: str) -> int:
    value = _int(event, key, where)
    if value < 0:
        raise BadInput(f"{where}.{key} is negative")
    return value
