"""Allocation events of a CPU run: what a CUDA allocator would have reserved, and a memory_viz trace.

The ledger reports each new storage and each release; this recorder replays them through the
allocator model (`allocator_model.AllocatorModel`) to predict `torch.cuda.memory_reserved()` for
the same program on a GPU, and keeps the latest events (bounded) with the user's line for a
snapshot in PyTorch's format (`memviz.write_snapshot`). Events only exist while the ledger sees
every op: `--exact`, `--capacity` or `--memory-viz` on CPU.
"""
from __future__ import annotations

import time
from collections import deque

from ..gpu.allocator_model import AllocatorModel, AllocatorOutOfMemory
from .ledger import Site

MAX_EVENTS = 100_000


class AllocationRecorder:
    def __init__(self, keep_trace: bool = False):
        self.model = AllocatorModel()
        self.trace: deque | None = deque(maxlen=MAX_EVENTS) if keep_trace else None
        self._handles: dict[int, int] = {}  # ledger key -> allocator model handle

    def __call__(self, action: str, key: int, nbytes: int, site: Site | None) -> None:
        if action == "alloc":
            try:
                handle = self.model.malloc(nbytes)
            except AllocatorOutOfMemory:  # the model has no capacity set; cannot happen
                return
            self._handles[key] = handle
            address = self.model.address(handle)
        else:
            handle = self._handles.pop(key, None)
            if handle is None:
                return
            address = self.model.address(handle)
            self.model.free(handle)
        if self.trace is not None:
            self.trace.append((action, address, nbytes, site, time.perf_counter_ns() // 1000))

    @property
    def predicted_reserved_peak(self) -> int:
        return self.model.peak_reserved
