"""A pure-Python model of PyTorch's CUDA caching allocator, to predict reserved memory and
fragmentation without a GPU.

Contract: `AllocatorModel.malloc(size)`, `.free(handle)` and `.empty_cache()` change `allocated`,
`reserved` and the other counters the way `c10/cuda/CUDACachingAllocator.cpp` does for one device
and one stream (names below are the C++ constants). Checked against a real GPU by
`tests/gpu/test_allocator_model_cuda.py`.

- Sizes round up to kMinBlockSize (512 B). A request of 0 bytes takes no memory.
- Requests of at most kSmallSize (1 MiB) use the small pool, whose segments are kSmallBuffer (2 MiB).
  Larger ones use the large pool: under kMinLargeAlloc (10 MiB) a kLargeBuffer (20 MiB) segment,
  otherwise the size rounded up to kRoundLarge (2 MiB). That segment size is the "Tried to
  allocate X" of PyTorch's OOM message.
- A free block is reused best-fit: the smallest free block of the same pool that fits, ties by address.
- The block found is split when the rest is >= 512 B (small pool) or > 1 MiB (large pool, and only
  for requests under max_split_size); otherwise the whole block is allocated.
- A freed block merges with the free blocks next to it in its segment.
- Segments go back to the device only on `empty_cache()`, or when a new segment would pass
  `capacity`: then every wholly free segment is released and the allocation retried once
  (`num_alloc_retries`); if it still does not fit, `AllocatorOutOfMemory` (`num_ooms`).
- `max_split_size` (PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb): blocks of that size or more are
  never split, serve only requests of that size or more (with less than 20 MiB to spare), and are
  the first released when a new segment does not fit.
- `expandable_segments=True`: each pool has one segment that grows by mapping pages (2 MiB in the
  small pool, 20 MiB in the large pool) at its lowest free address; a rest of 512 B is enough to
  split in both pools; releasing unmaps the whole free pages inside free blocks.

Not modelled: streams and events, CUDA graph pools, roundup_power2_divisions, garbage collection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..sizes import format_bytes

MiB = 1024**2
K_MIN_BLOCK_SIZE = 512
K_SMALL_SIZE = 1 * MiB
K_SMALL_BUFFER = 2 * MiB
K_LARGE_BUFFER = 20 * MiB
K_MIN_LARGE_ALLOC = 10 * MiB
K_ROUND_LARGE = 2 * MiB
_PAGE = {"small": K_SMALL_BUFFER, "large": K_LARGE_BUFFER}  # expandable segments' page per pool
_ADDRESS_SPACE_PAGES = 1 << 24  # an expandable segment reserves far more addresses than any GPU has


def round_size(size: int) -> int:
    """The block size a request of `size` bytes gets (a multiple of 512 B)."""
    return max(K_MIN_BLOCK_SIZE, -(-size // K_MIN_BLOCK_SIZE) * K_MIN_BLOCK_SIZE)


def allocation_size(size: int) -> int:
    """The segment asked from the device for a request that no cached block serves."""
    rounded = round_size(size)
    if rounded <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if rounded < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return -(-rounded // K_ROUND_LARGE) * K_ROUND_LARGE


def _pool_of(rounded: int) -> str:
    return "small" if rounded <= K_SMALL_SIZE else "large"


class AllocatorOutOfMemory(MemoryError):
    """The model's OOM: the new segment does not fit in `capacity`, even after releasing the cache."""

    def __init__(self, requested: int, alloc_size: int, allocated: int, reserved: int, capacity: int):
        super().__init__(
            f"allocator model out of memory: tried to allocate {format_bytes(alloc_size)} (a request of "
            f"{format_bytes(requested)}) with {format_bytes(allocated)} allocated and "
            f"{format_bytes(reserved)} reserved of {format_bytes(capacity)}"
        )
        self.requested, self.alloc_size = requested, alloc_size
        self.allocated, self.reserved, self.capacity = allocated, reserved, capacity


class _Segment:
    def __init__(self, pool: str, base: int, expandable: bool):
        self.pool, self.base, self.expandable = pool, base, expandable


@dataclass(eq=False)
class _Block:
    segment: _Segment
    offset: int
    size: int
    state: str  # "allocated" | "free" | "unmapped" (expandable segments only)
    prev: _Block | None = None
    next: _Block | None = None

    @property
    def address(self) -> int:
        return self.segment.base + self.offset

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class AllocatorModel:
    """One device's caching allocator. Handles are ints; sizes are bytes."""

    def __init__(self, capacity: int | None = None, expandable_segments: bool = False,
                 max_split_size: int | None = None):
        self.capacity = capacity
        self.expandable_segments = expandable_segments
        self.max_split_size = max_split_size
        self.allocated = self.reserved = self.peak_allocated = self.peak_reserved = 0
        self.num_alloc_retries = self.num_ooms = 0
        self._free: dict[str, set[_Block]] = {"small": set(), "large": set()}  # mapped free blocks
        self._segments: list[_Segment] = []
        self._expandable: dict[str, _Block] = {}  # pool -> first block of its growing segment
        self._handles: dict[int, _Block | None] = {}
        self._next_handle = 1
        self._next_base = 1 << 32

    # -- the allocator's API -------------------------------------------------------------------
    def malloc(self, size: int) -> int:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        if size == 0:  # PyTorch hands out no memory for empty storages
            self._handles[handle] = None
            return handle
        rounded = round_size(size)
        pool = _pool_of(rounded)
        block = self._find_free(pool, rounded) or self._new_memory(pool, size, rounded)
        self._free[pool].discard(block)
        if self._should_split(block, rounded):
            rest = _Block(block.segment, block.offset + rounded, block.size - rounded, "free", block, block.next)
            if block.next:
                block.next.prev = rest
            block.next, block.size = rest, rounded
            self._free[pool].add(rest)
        block.state = "allocated"
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self._handles[handle] = block
        return handle

    def free(self, handle: int) -> None:
        if handle not in self._handles:
            raise ValueError(f"unknown or already freed handle {handle}")
        block = self._handles.pop(handle)
        if block is None:
            return
        self.allocated -= block.size
        block.state = "free"
        self._free[block.segment.pool].add(self._merge(block))

    def empty_cache(self) -> None:
        """Give every wholly free segment (and, expandable, every free page) back to the device."""
        for pool in ("large", "small"):
            for block in sorted(self._free[pool], key=lambda b: b.address):
                if block.segment.expandable:
                    self._unmap_free_pages(block)
                elif not block.is_split():
                    self._free[pool].discard(block)
                    self._segments.remove(block.segment)
                    self.reserved -= block.size

    def replay(self, events: Iterable[tuple]) -> list[tuple[int, int]]:
        """Run `("alloc", id, size)`, `("free", id)` and `("empty_cache",)` events in order; returns
        (allocated, reserved) after each one. `AllocatorOutOfMemory` propagates."""
        handles: dict[object, int] = {}
        samples = []
        for event in events:
            if event[0] == "alloc":
                handles[event[1]] = self.malloc(event[2])
            elif event[0] == "free":
                self.free(handles.pop(event[1]))
            elif event[0] == "empty_cache":
                self.empty_cache()
            else:
                raise ValueError(f"unknown event {event!r}")
            samples.append((self.allocated, self.reserved))
        return samples

    # -- reading -------------------------------------------------------------------------------
    @property
    def inactive_split_bytes(self) -> int:
        """Free bytes in segments that also hold other blocks: reserved, free, yet not releasable."""
        return sum(b.size for pool in self._free.values() for b in pool
                   if b.is_split() and not b.segment.expandable)

    def address(self, handle: int) -> int | None:
        block = self._handles[handle]
        return block.address if block else None

    def block_size(self, handle: int) -> int:
        block = self._handles[handle]
        return block.size if block else 0

    # -- finding and making room ---------------------------------------------------------------
    def _find_free(self, pool: str, size: int) -> _Block | None:
        fits = sorted((b for b in self._free[pool] if b.size >= size), key=lambda b: (b.size, b.address))
        if not fits:
            return None
        i = 0
        # A free block that can still grow into unmapped pages counts as that big, so it is taken
        # last (the C++ walks on while the next block's expandable size is smaller).
        while self.expandable_segments and i + 1 < len(fits) and _growable(fits[i + 1]) < _growable(fits[i]):
            i += 1
        block, mss = fits[i], self.max_split_size
        if mss is not None and (size < mss <= block.size or (size >= mss and block.size >= size + K_LARGE_BUFFER)):
            return None  # oversize blocks serve only oversize requests, and not with 20 MiB to spare
        return block

    def _new_memory(self, pool: str, size: int, rounded: int) -> _Block:
        block = self._grow(pool, rounded)
        if block is None and self.max_split_size is not None and self._release_oversize(pool, rounded):
            block = self._grow(pool, rounded)
        if block is None:
            self.empty_cache()
            self.num_alloc_retries += 1
            block = self._grow(pool, rounded)
        if block is None:
            self.num_ooms += 1
            raise AllocatorOutOfMemory(size, allocation_size(rounded), self.allocated, self.reserved,
                                       self.capacity or 0)
        return block

    def _grow(self, pool: str, rounded: int) -> _Block | None:
        if self.expandable_segments:
            return self._grow_expandable(pool, rounded)
        size = allocation_size(rounded)
        if not self._fits(size):
            return None
        segment = _Segment(pool, self._next_base, expandable=False)
        self._next_base += size
        self._segments.append(segment)
        self._reserve(size)
        return _Block(segment, 0, size, "free")

    def _grow_expandable(self, pool: str, size: int) -> _Block | None:
        if pool not in self._expandable:
            segment = _Segment(pool, self._next_base, expandable=True)
            self._next_base += _PAGE[pool] * _ADDRESS_SPACE_PAGES
            self._segments.append(segment)
            self._expandable[pool] = _Block(segment, 0, _PAGE[pool] * _ADDRESS_SPACE_PAGES, "unmapped")
        start = self._lowest_room(self._expandable[pool], size)
        if not self._fits(self._pages_to_map(start, size)):
            return None
        block = start if start.state == "free" else self._map(start, size)
        while block.size < size:  # the run goes on through unmapped (and free) blocks
            block = self._map(block.next, size - block.size)
        return block

    def _lowest_room(self, first: _Block, size: int) -> _Block:
        """The lowest-address run of free and unmapped blocks holding `size` bytes, starting at an
        unmapped block or at the free block just before it."""
        block = first
        while block is not None:
            if block.state == "unmapped":
                start = block.prev if block.prev and block.prev.state == "free" else block
                room, run = 0, start
                while run is not None and run.state != "allocated" and room < size:
                    room, run = room + run.size, run.next
                if room >= size:
                    return start
            block = block.next
        raise AssertionError("an expandable segment's address space never runs out in the model")

    def _pages_to_map(self, start: _Block, size: int) -> int:
        need, have, block = 0, 0, start
        while have < size:
            page = _PAGE[block.segment.pool]
            step = block.size if block.state == "free" else min(block.size, _round_up(size - have, page))
            need += step * (block.state == "unmapped")
            have += step
            block = block.next
        return need

    def _map(self, block: _Block, size: int) -> _Block:
        """Map the pages covering the first `size` bytes of an unmapped block; returns the free block
        they become part of."""
        take = min(block.size, _round_up(size, _PAGE[block.segment.pool]))
        if take < block.size:
            rest = _Block(block.segment, block.offset + take, block.size - take, "unmapped", block, block.next)
            if block.next:
                block.next.prev = rest
            block.next, block.size = rest, take
        block.state = "free"
        self._reserve(take)
        merged = self._merge(block)
        self._free[merged.segment.pool].add(merged)
        return merged

    def _unmap_free_pages(self, block: _Block) -> None:
        """Replace a free block by [free][unmapped whole pages][free] and give the pages back."""
        pool, page = block.segment.pool, _PAGE[block.segment.pool]
        begin = _round_up(block.offset, page)
        end = (block.offset + block.size) // page * page
        if end <= begin:
            return
        self._free[pool].discard(block)
        prev, after, hole = block.prev, block.next, None
        for offset, size, state in ((block.offset, begin - block.offset, "free"), (begin, end - begin, "unmapped"),
                                    (end, block.offset + block.size - end, "free")):
            if not size:
                continue
            piece = _Block(block.segment, offset, size, state, prev)
            if prev:
                prev.next = piece
            elif pool in self._expandable:
                self._expandable[pool] = piece
            prev = piece
            if state == "free":
                self._free[pool].add(piece)
            else:
                hole = piece
        prev.next = after
        if after:
            after.prev = prev
        self._merge(hole)
        self.reserved -= end - begin

    def _release_oversize(self, pool: str, size: int) -> bool:
        """Free cached blocks of max_split_size or more: the smallest that covers the request, or
        else the largest ones until they add up to it."""
        mss = self.max_split_size or 0
        key = max(size, mss)
        cached = sorted((b for b in self._free[pool] if b.size >= mss and not b.is_split()),
                        key=lambda b: (b.size, b.address))
        chosen = [b for b in cached if b.size >= key][:1]
        for block in reversed(cached) if not chosen else ():
            if sum(b.size for b in chosen) >= key:
                break
            chosen.append(block)
        for block in chosen:
            self._free[pool].discard(block)
            self._segments.remove(block.segment)
            self.reserved -= block.size
        return sum(b.size for b in chosen) >= key

    # -- blocks --------------------------------------------------------------------------------
    def _should_split(self, block: _Block, size: int) -> bool:
        rest = block.size - size
        if block.segment.pool == "small" or block.segment.expandable:
            return rest >= K_MIN_BLOCK_SIZE
        return (self.max_split_size is None or size < self.max_split_size) and rest > K_SMALL_SIZE

    def _merge(self, block: _Block) -> _Block:
        """Absorb neighbours in the same state (free into free, unmapped into unmapped)."""
        for other in (block.prev, block.next):
            if other is None or other.state != block.state:
                continue
            self._free[other.segment.pool].discard(other)
            if other is block.prev:
                block.offset, block.prev = other.offset, other.prev
                if other.prev:
                    other.prev.next = block
                elif block.segment.expandable:
                    self._expandable[block.segment.pool] = block
            else:
                block.next = other.next
                if other.next:
                    other.next.prev = block
            block.size += other.size
        return block

    def _fits(self, size: int) -> bool:
        return self.capacity is None or self.reserved + size <= self.capacity

    def _reserve(self, size: int) -> None:
        self.reserved += size
        self.peak_reserved = max(self.peak_reserved, self.reserved)


def _growable(block: _Block) -> float:
    """A free block's size for best fit under expandable segments: unmapped space after it counts."""
    return block.size + (block.next.size if block.next and block.next.state == "unmapped" else 0)


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


__all__ = ["AllocatorModel", "AllocatorOutOfMemory", "allocation_size", "round_size",
           "K_MIN_BLOCK_SIZE", "K_SMALL_SIZE", "K_SMALL_BUFFER", "K_LARGE_BUFFER", "K_MIN_LARGE_ALLOC",
           "K_ROUND_LARGE"]
