"""The tensor ledger: every live tensor storage on the watched device, its bytes and what it is.

Storages are counted once (views and in-place ops share them) and leave the ledger through a weakref
callback when PyTorch frees them, the mechanism of PyTorch's own MemTracker. Three feeds add
storages:

- the dispatch mode (`LedgerMode`), which sees the outputs of every aten op. Exact, but a Python
  dispatch mode costs ~7 us per op, so the session switches it on only for sampled steps, with
  `--capacity` (it is what raises the simulated OOM) or when exactness is asked for;
- the saved-tensor pack hook (activations kept for backward), cheap, always on;
- the walks at step boundaries over parameters, `.grad` and optimizer state, also cheap.

Categories only move up in `_RANK`: a weight saved for backward stays a parameter.
"""
from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..report.model import CATEGORIES, empty_categories
from ..sizes import format_bytes

_RANK = {"other": 0, "activations": 1, "gradients": 2, "optimizer_state": 3, "parameters": 4}


@dataclass
class Site:
    """Where user code created a storage: the innermost frame outside torch and oomdoctor."""

    file: str
    line: int
    function: str


class Entry:
    __slots__ = ("nbytes", "category", "step", "site", "ref", "__weakref__")

    def __init__(self, nbytes: int, category: str, step: int, site: Site | None):
        self.nbytes = nbytes
        self.category = category
        self.step = step  # the step that created it: survivors of old steps are what grows
        self.site = site
        self.ref: weakref.ref | None = None


class Ledger:
    """Live storages of one device type, by category, with a peak that callers read and reset."""

    def __init__(self, device_type: str = "cpu", capacity: int | None = None):
        self.device_type = device_type
        # `is_cpu`/`is_cuda` are much cheaper than building a torch.device per tensor.
        self._on_device: Callable[[torch.Tensor], bool] = {
            "cpu": lambda t: t.is_cpu, "cuda": lambda t: t.is_cuda,
        }.get(device_type, lambda t: t.device.type == device_type)
        self.capacity = capacity
        self.entries: dict[int, Entry] = {}  # id(storage) -> entry; ids stay valid while alive
        self.by_category = empty_categories()
        self.total = 0
        self.peak = 0
        self._peak_by_category = empty_categories()
        self._at_peak = True  # the breakdown at the peak is copied lazily, when the total falls
        self.step = 0
        self.record_sites = False
        self.on_oom: Callable[[int], None] | None = None  # called before the simulated OOM is raised
        # Told of every new storage and every release: ("alloc" | "free", key, bytes, site).
        self.listener: Callable[[str, int, int, Site | None], None] | None = None

    # -- feeding -------------------------------------------------------------------------------
    def track(self, tensor: torch.Tensor, category: str, promote: bool = True) -> None:
        """Count `tensor`'s storage under `category` (or promote it, if already counted and
        `promote`: the walks and the pack hook know what a tensor is, an op's output view does not).

        On the hot path of every op while the dispatch mode is on: keep it lean.
        """
        # A DTensor (FSDP2, tensor parallel) reports the global size: this rank holds its shard.
        tensor = getattr(tensor, "_local_tensor", tensor)
        if not self._on_device(tensor):
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested and other storage-less tensors
            return
        key = id(storage)
        entry = self.entries.get(key)
        if entry is not None:
            if promote and _RANK[category] > _RANK[entry.category]:
                self._move(entry, category)
            return
        nbytes = storage.nbytes()
        if nbytes == 0:
            return
        if self.capacity is not None and self.total + nbytes > self.capacity:
            self._raise_oom(nbytes)
        entry = Entry(nbytes, category, self.step, _user_site() if self.record_sites else None)
        entry.ref = weakref.ref(storage, self._make_release(key, entry))
        self.entries[key] = entry
        if self.listener is not None:
            self.listener("alloc", key, nbytes, entry.site)
        self.total += nbytes
        self.by_category[category] += nbytes
        if self.total > self.peak:
            self.peak = self.total
            self._at_peak = True

    def _make_release(self, key: int, entry: Entry) -> Callable[[weakref.ref], None]:
        def release(_ref: weakref.ref) -> None:
            if self.entries.get(key) is entry:
                if self._at_peak:  # leaving a peak: remember what it was made of
                    self._peak_by_category = dict(self.by_category)
                    self._at_peak = False
                del self.entries[key]
                if self.listener is not None:
                    self.listener("free", key, entry.nbytes, None)
                self.total -= entry.nbytes
                self.by_category[entry.category] -= entry.nbytes

        return release

    def _move(self, entry: Entry, category: str) -> None:
        self.by_category[entry.category] -= entry.nbytes
        self.by_category[category] += entry.nbytes
        entry.category = category

    def _raise_oom(self, nbytes: int) -> None:
        __tracebackhide__ = True
        if self.on_oom is not None:
            self.on_oom(nbytes)
        free = max(self.capacity - self.total, 0)
        raise torch.OutOfMemoryError(
            f"{self.device_type.upper()} out of memory (simulated by oomdoctor --capacity). "
            f"Tried to allocate {_torch_size(nbytes)}. Device {self.device_type} has a total capacity "
            f"of {_torch_size(self.capacity)} of which {_torch_size(free)} is free. Of the allocated "
            f"memory {_torch_size(self.total)} is allocated by PyTorch, and 0 bytes is reserved by "
            f"PyTorch but unallocated."
        )

    # -- reading -------------------------------------------------------------------------------
    @property
    def peak_by_category(self) -> dict[str, int]:
        return dict(self.by_category) if self._at_peak else self._peak_by_category

    def take_peak(self) -> tuple[int, dict[str, int]]:
        """Peak since the last call, with its breakdown; the next peak starts from now."""
        result = (self.peak, self.peak_by_category)
        self.peak = self.total
        self._at_peak = True
        return result

    def live(self) -> Iterator[Entry]:
        return iter(list(self.entries.values()))

    def largest(self, n: int = 5) -> list[Entry]:
        return sorted(self.entries.values(), key=lambda e: e.nbytes, reverse=True)[:n]


class LedgerMode(TorchDispatchMode):
    """Feeds the ledger with the output storages of every op while it is on."""

    def __init__(self, ledger: Ledger, category_now: Callable[[], str]):
        super().__init__()
        self.ledger = ledger
        self.category_now = category_now

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        """`torch.compile` traces as if this mode were not there (a mode it sees makes dynamo
        skip the frame for good), and the compiled code's allocations still pass through it at
        run time: a compiled model is measured compiled."""
        return True

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """No `torch._dynamo` wrapper around `__torch_dispatch__` at class creation: it imports
        dynamo (~1 s) on the first op of every run. core/compile.py adds it once the program
        compiles, which is when dynamo could otherwise trace this frame."""
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest and IPython hide this frame from the user's traceback
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            # Its storage is counted already, or was made before the session or on a step not
            # watched (a batch built in advance): adopting it now would be growth that is not.
            return out
        category = self.category_now()
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                # A view made in backward of a saved activation is no gradient: new storages only.
                self.ledger.track(leaf, category, promote=False)
        return out


_SKIP_PREFIXES = (torch.__file__.rsplit("/", 1)[0] + "/", __file__.rsplit("/", 2)[0] + "/")
_LIBRARIES = ("/site-packages/", "/dist-packages/", "<frozen")


def _user_site() -> Site | None:
    """The innermost frame of the user's own code: not torch, not oomdoctor, not an installed
    library (Lightning's data loaders are nothing the user can change)."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_SKIP_PREFIXES) and not any(part in filename for part in _LIBRARIES):
            return Site(filename, frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return None


def _torch_size(n: int) -> str:
    """Sizes as PyTorch's OOM messages print them ("20.00 MiB", "512 bytes")."""
    return f"{n} bytes" if n < 1024 else format_bytes(n)


__all__ = ["CATEGORIES", "Entry", "Ledger", "LedgerMode", "Site"]
