"""Bytes in use by the C heap of this process: the cheap total on CPU (under a microsecond on a
tidy heap; `mallinfo2` walks the free lists, so a fragmented heap costs milliseconds, which is why
core/heap.py rations the readings).

PyTorch's CPU allocator takes its memory from `posix_memalign`, so glibc's `mallinfo2()` (in-use
chunks plus mmapped blocks) rises and falls with every CPU tensor, whether or not oomdoctor saw
the op that made it. A session reads it at a handful of points per step (forward and backward
ends, optimizer steps, boundaries) on the steps its per-op view is off, and calibrates it against
the exact ledger on the steps that view is on: the difference is what else lives on the heap.

Elsewhere (macOS, musl, Windows) `heap_bytes()` returns None and the session falls back to what
it can read at step boundaries, marked as an estimate.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Callable


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def _reader() -> Callable[[], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2  # glibc >= 2.33; mallinfo()'s int fields wrap past 2 GiB
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    mallinfo2.argtypes = []

    def read() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    try:
        read()
    except Exception:
        return None
    return read


_READ = _reader()


def heap_bytes() -> int | None:
    return _READ() if _READ is not None else None


def available() -> bool:
    return _READ is not None
