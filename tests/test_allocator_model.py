"""The allocator model follows each rule of PyTorch's CUDA caching allocator, so that what it
predicts (reserved bytes, fragmentation, the "Tried to allocate" size) matches a real GPU.

Each test is a hand-written allocation sequence whose result follows from one rule of
c10/cuda/CUDACachingAllocator.cpp. tests/gpu/test_allocator_model_cuda.py replays sequences on a GPU.
"""
from __future__ import annotations

import pytest

from oomdoctor.gpu.allocator_model import AllocatorModel, AllocatorOutOfMemory, allocation_size, round_size

KiB, MiB = 1024, 1024**2


def test_sizes_round_up_to_512_bytes():
    m = AllocatorModel()
    a, b = m.malloc(1), m.malloc(513)
    assert (m.block_size(a), m.block_size(b)) == (512, 1024)
    assert m.allocated == 1536
    assert round_size(1024) == 1024


def test_an_empty_tensor_takes_no_memory():
    m = AllocatorModel()
    h = m.malloc(0)
    assert (m.allocated, m.reserved) == (0, 0)
    m.free(h)


def test_small_requests_share_2_mib_segments():
    # GIVEN requests of at most 1 MiB: they are packed into 2 MiB segments of the small pool
    m = AllocatorModel()
    m.malloc(1 * MiB)
    m.malloc(1 * MiB)
    assert m.reserved == 2 * MiB
    m.malloc(1000)  # the first segment is full: a second one
    assert m.reserved == 4 * MiB


def test_requests_between_1_and_10_mib_get_a_20_mib_segment_they_share():
    m = AllocatorModel()
    m.malloc(1 * MiB + 1)
    assert m.reserved == 20 * MiB
    m.malloc(5 * MiB)  # fits in what is left of the same segment
    assert m.reserved == 20 * MiB
    assert allocation_size(9 * MiB) == 20 * MiB


def test_requests_of_10_mib_or_more_round_up_to_2_mib():
    m = AllocatorModel()
    m.malloc(10 * MiB + 1)
    assert m.reserved == 12 * MiB
    assert allocation_size(10 * MiB) == 10 * MiB


def test_large_pool_splits_only_when_more_than_1_mib_is_left():
    # WHEN 11 MiB takes a 12 MiB segment, the 1 MiB left is not split off: the block is allocated whole
    m = AllocatorModel()
    whole = m.malloc(11 * MiB)
    assert m.block_size(whole) == 12 * MiB and m.allocated == 12 * MiB
    # WHEN 10 MiB + 512 B takes a 12 MiB segment, the rest (just under 2 MiB) is split off and free
    m = AllocatorModel()
    split = m.malloc(10 * MiB + 1)
    assert m.block_size(split) == 10 * MiB + 512
    assert m.inactive_split_bytes == 2 * MiB - 512


def test_small_pool_splits_a_rest_of_512_bytes():
    m = AllocatorModel()
    m.malloc(1 * MiB)
    m.malloc(1 * MiB - 512)
    assert m.inactive_split_bytes == 512  # the last 512 B of the 2 MiB segment, free but split off


def test_best_fit_takes_the_smallest_free_block_that_fits():
    # GIVEN one 20 MiB segment cut into [4 MiB free][spacer][2 MiB free][spacer][rest]
    m = AllocatorModel()
    big = m.malloc(4 * MiB)
    m.malloc(int(1.5 * MiB))
    small = m.malloc(2 * MiB)
    m.malloc(int(1.5 * MiB))
    big_at, small_at = m.address(big), m.address(small)
    m.free(big)
    m.free(small)
    # WHEN 2 MiB is asked for THEN the 2 MiB hole is used, not the 4 MiB one
    assert m.address(m.malloc(2 * MiB)) == small_at
    assert m.address(m.malloc(3 * MiB)) == big_at


def test_best_fit_breaks_ties_by_address():
    m = AllocatorModel()
    first = m.malloc(2 * MiB)
    m.malloc(2 * MiB)
    second = m.malloc(2 * MiB)
    m.malloc(2 * MiB)
    first_at = m.address(first)
    m.free(second)
    m.free(first)
    assert m.address(m.malloc(2 * MiB)) == first_at


def test_pools_do_not_share_blocks():
    # GIVEN a cached, free small-pool segment (2 MiB)
    m = AllocatorModel()
    m.free(m.malloc(512))
    # WHEN a 1.5 MiB request comes THEN it goes to the large pool: a new 20 MiB segment
    m.malloc(int(1.5 * MiB))
    assert m.reserved == 22 * MiB


def test_freed_blocks_merge_with_free_neighbours():
    # GIVEN three adjacent blocks filling a 20 MiB segment, freed outer ones first
    m = AllocatorModel()
    a, b, c = m.malloc(5 * MiB), m.malloc(5 * MiB), m.malloc(10 * MiB - 1)
    m.free(a)
    m.free(c)
    m.empty_cache()
    assert m.reserved == 20 * MiB  # the segment still holds b: nothing goes back
    # WHEN the middle one is freed THEN the three merge into one free segment, which can go back
    m.free(b)
    assert m.inactive_split_bytes == 0
    m.empty_cache()
    assert m.reserved == 0


def test_freed_memory_stays_reserved_until_empty_cache():
    m = AllocatorModel()
    for size in (100, 3 * MiB, 50 * MiB):
        m.free(m.malloc(size))
    assert (m.allocated, m.reserved) == (0, 2 * MiB + 20 * MiB + 50 * MiB)
    m.empty_cache()
    assert m.reserved == 0
    assert (m.peak_allocated, m.peak_reserved) == (50 * MiB, 72 * MiB)


def test_at_capacity_the_cache_is_released_and_the_allocation_retried():
    m = AllocatorModel(capacity=40 * MiB)
    m.free(m.malloc(20 * MiB))  # 20 MiB cached
    m.malloc(30 * MiB)  # 20 + 30 > 40: release the cached segment, retry
    assert (m.reserved, m.num_alloc_retries, m.num_ooms) == (30 * MiB, 1, 0)


def test_oom_reports_the_segment_size_not_the_tensor_size():
    m = AllocatorModel(capacity=40 * MiB)
    m.malloc(30 * MiB)
    with pytest.raises(AllocatorOutOfMemory) as err:
        m.malloc(5 * MiB)  # would take a 20 MiB segment
    assert (err.value.requested, err.value.alloc_size) == (5 * MiB, 20 * MiB)
    assert (m.num_alloc_retries, m.num_ooms) == (1, 1)
    assert "20.00 MiB" in str(err.value)


def test_fragmentation_ooms_with_enough_free_memory_in_pieces():
    # GIVEN three 20 MiB segments of 5 MiB blocks, every other block freed: 30 MiB free in 5 MiB holes
    m = AllocatorModel(capacity=60 * MiB)
    handles = [m.malloc(5 * MiB) for _ in range(12)]
    for h in handles[::2]:
        m.free(h)
    assert m.reserved - m.allocated == 30 * MiB == m.inactive_split_bytes
    # WHEN 10 MiB is asked for THEN no hole fits and no segment is wholly free: OOM
    with pytest.raises(AllocatorOutOfMemory):
        m.malloc(10 * MiB)


def test_expandable_segments_grow_by_pages():
    m = AllocatorModel(expandable_segments=True)
    m.malloc(1000)
    assert m.reserved == 2 * MiB  # small pool: 2 MiB pages
    m.malloc(3 * MiB)
    assert m.reserved == 2 * MiB + 20 * MiB  # large pool: 20 MiB pages
    m.malloc(25 * MiB)  # 28 MiB in the large segment: two pages
    assert m.reserved == 2 * MiB + 40 * MiB


def test_expandable_segments_split_any_rest_of_512_bytes():
    m = AllocatorModel(expandable_segments=True)
    h = m.malloc(11 * MiB)  # without expandable segments this takes a whole 12 MiB block
    assert m.block_size(h) == 11 * MiB


def test_expandable_segments_reuse_memory_as_sizes_creep_up():
    # The batch-size-N+1 pattern: each step asks for a little more than the last freed
    growing = [("alloc", 1, 10 * MiB), ("free", 1), ("alloc", 2, 12 * MiB), ("free", 2),
               ("alloc", 3, 14 * MiB), ("free", 3)]
    assert AllocatorModel().replay(growing)[-1] == (0, 36 * MiB)  # three segments, none reusable
    assert AllocatorModel(expandable_segments=True).replay(growing)[-1] == (0, 20 * MiB)  # one page


def test_expandable_segments_give_back_whole_free_pages():
    m = AllocatorModel(expandable_segments=True)
    a = m.malloc(30 * MiB)
    b = m.malloc(5 * MiB)  # 35 MiB in two 20 MiB pages
    m.free(a)
    m.empty_cache()  # the first page is wholly free; the second still holds b
    assert m.reserved == 20 * MiB
    m.free(b)
    m.empty_cache()
    assert m.reserved == 0
    m.malloc(40 * MiB)  # the unmapped space is mapped again
    assert m.reserved == 40 * MiB


def test_expandable_segments_avoid_a_fragmentation_oom():
    # GIVEN 100 MiB of capacity, cut by a live 30 MiB block into a 60 MiB hole and a 10 MiB hole
    def fragmented(expandable: bool) -> AllocatorModel:
        m = AllocatorModel(capacity=100 * MiB, expandable_segments=expandable)
        m.free(m.malloc(100 * MiB))
        a = m.malloc(60 * MiB)
        m.malloc(30 * MiB)
        m.free(a)
        return m

    # WHEN 70 MiB is asked for
    # THEN cudaMalloc'd segments cannot help: the 100 MiB segment is split, so it never goes back
    classic = fragmented(expandable=False)
    with pytest.raises(AllocatorOutOfMemory):
        classic.malloc(70 * MiB)
    assert classic.reserved == 100 * MiB
    # THEN an expandable segment unmaps the hole's three pages and maps them again after the live block
    expandable = fragmented(expandable=True)
    expandable.malloc(70 * MiB)
    assert (expandable.reserved, expandable.num_alloc_retries, expandable.num_ooms) == (100 * MiB, 1, 0)


def test_max_split_size_keeps_oversize_blocks_for_oversize_requests():
    m = AllocatorModel(max_split_size=40 * MiB)
    m.free(m.malloc(50 * MiB))
    m.malloc(30 * MiB)  # under 40 MiB: may not take the cached 50 MiB block
    assert m.reserved == 80 * MiB
    h = m.malloc(45 * MiB)  # 40 MiB or more, less than 20 MiB to spare: takes it, unsplit
    assert m.reserved == 80 * MiB and m.block_size(h) == 50 * MiB


def test_max_split_size_releases_an_oversize_block_first_at_capacity():
    m = AllocatorModel(capacity=90 * MiB, max_split_size=40 * MiB)
    m.free(m.malloc(50 * MiB))  # an oversize cached block
    m.free(m.malloc(4 * MiB))  # a cached 20 MiB segment that is not oversize
    m.malloc(30 * MiB)  # 70 + 30 > 90: releasing the oversize block is enough, no full retry
    assert (m.reserved, m.num_alloc_retries) == (50 * MiB, 0)


def test_replay_reports_allocated_and_reserved_after_each_event():
    events = [("alloc", "x", 3 * MiB), ("alloc", "y", 100), ("free", "x"), ("empty_cache",), ("free", "y")]
    assert AllocatorModel().replay(events) == [
        (3 * MiB, 20 * MiB), (3 * MiB + 512, 22 * MiB), (512, 22 * MiB), (512, 2 * MiB), (0, 2 * MiB)]


def test_bad_use_is_refused():
    m = AllocatorModel()
    h = m.malloc(10)
    m.free(h)
    with pytest.raises(ValueError):
        m.free(h)
    with pytest.raises(ValueError):
        m.malloc(-1)
    with pytest.raises(ValueError):
        m.replay([("resize", 1)])
