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
from typing import Any

from ..errors import BadInput
from ..probes.events import AllocationRecorder


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
    try:
        data = _PlainDataUnpickler(io.BytesIO(path.read_bytes())).load()
    except FileNotFoundError:
        raise BadInput(f"no such file: {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise BadInput(f"{path} is not a memory snapshot: {exc}") from None
    if not isinstance(data, dict) or "device_traces" not in data and "segments" not in data:
        raise BadInput(f"{path} is not a memory snapshot (no segments or device_traces)")
    return data


def summarize(snapshot: dict[str, Any]) -> dict[str, Any]:
    """What a snapshot says at a glance: reserved and allocated at its end, and where the live
    memory of its trace was allocated."""
    segments = snapshot.get("segments") or []
    reserved = sum(s.get("total_size", 0) for s in segments)
    allocated = sum(s.get("allocated_size", 0) for s in segments)
    live: dict[int, dict[str, Any]] = {}
    for trace in snapshot.get("device_traces") or []:
        for event in trace:
            if event.get("action") == "alloc":
                live[event.get("addr")] = event
            elif event.get("action") in ("free_completed", "free_requested"):
                live.pop(event.get("addr"), None)
    by_line: Counter = Counter()
    for event in live.values():
        frames = event.get("frames") or []
        top = next((f for f in frames if "site-packages" not in f.get("filename", "")), frames[0] if frames else None)
        key = f"{top['filename']}:{top['line']}" if top else "(no stack)"
        by_line[key] += event.get("size", 0)
    return {"segments": len(segments), "reserved_bytes": reserved, "allocated_bytes": allocated,
            "live_in_trace_bytes": sum(e.get("size", 0) for e in live.values()),
            "top_lines": by_line.most_common(10)}
