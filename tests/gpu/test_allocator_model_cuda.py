"""On a real GPU, PyTorch's caching allocator reserves exactly what the allocator model predicts,
and a real OOM message names the segment size the model computes.

Each sequence is replayed with `torch.empty(n, dtype=torch.uint8, device="cuda")` tensors, after
`torch.cuda.empty_cache()`, measuring `memory_allocated()` and `memory_reserved()` deltas after every
event; the numbers are printed (pytest -s) next to the model's.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from oomdoctor.gpu.allocator_model import AllocatorModel, AllocatorOutOfMemory
from oomdoctor.gpu.explain import explain, parse

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

KiB, MiB, GiB = 1024, 1024**2, 1024**3

SEQUENCES = {
    "small pool": [("alloc", "a", 1000), ("alloc", "b", 600 * KiB), ("alloc", "c", 1 * MiB), ("free", "a"),
                   ("alloc", "d", 512), ("free", "b"), ("free", "c"), ("free", "d"), ("empty_cache",)],
    "large pool, split and whole": [
        ("alloc", "a", int(1.5 * MiB)), ("alloc", "b", 5 * MiB), ("alloc", "c", 12 * MiB + 1), ("alloc", "d", 11 * MiB),
        ("free", "b"), ("alloc", "e", 3 * MiB), ("free", "a"), ("free", "c"), ("alloc", "f", 19 * MiB),
        ("free", "d"), ("free", "e"), ("free", "f"), ("empty_cache",)],
    "sizes creep up": [("alloc", 1, 10 * MiB), ("free", 1), ("alloc", 2, 12 * MiB), ("free", 2),
                       ("alloc", 3, 14 * MiB), ("free", 3), ("alloc", 4, 9 * MiB), ("free", 4), ("empty_cache",)],
    "fragmented cache": [("alloc", "x", 100 * MiB), ("free", "x"), ("alloc", "a", 60 * MiB), ("alloc", "b", 30 * MiB),
                         ("free", "a"), ("alloc", "c", 50 * MiB), ("free", "c"), ("empty_cache",), ("free", "b"),
                         ("empty_cache",)],
}


def set_expandable(on: bool) -> None:
    torch.cuda.empty_cache()
    with warnings.catch_warnings():  # deprecated in 2.11 for a private torch._C function; still works
        warnings.simplefilter("ignore", FutureWarning)
        torch.cuda.memory._set_allocator_settings(f"expandable_segments:{on}")


def replay_on_gpu(events) -> list[tuple[int, int, int]]:
    """(allocated, reserved, inactive split bytes) after each event."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() == 0, "the sequence must start with nothing live on the GPU"
    base = torch.cuda.memory_reserved()
    live: dict = {}
    samples = []
    for event in events:
        if event[0] == "alloc":
            live[event[1]] = torch.empty(event[2], dtype=torch.uint8, device="cuda")
        elif event[0] == "free":
            del live[event[1]]
        else:
            torch.cuda.empty_cache()
        stats = torch.cuda.memory_stats()
        samples.append((stats["allocated_bytes.all.current"], stats["reserved_bytes.all.current"] - base,
                        stats["inactive_split_bytes.all.current"]))
    live.clear()
    torch.cuda.empty_cache()
    return samples


def replay_on_model(model: AllocatorModel, events) -> list[tuple[int, int, int]]:
    handles: dict = {}
    samples = []
    for event in events:
        if event[0] == "alloc":
            handles[event[1]] = model.malloc(event[2])
        elif event[0] == "free":
            model.free(handles.pop(event[1]))
        else:
            model.empty_cache()
        samples.append((model.allocated, model.reserved, model.inactive_split_bytes))
    return samples


def show(name: str, events, gpu, model) -> None:
    print(f"\n{name}: event | GPU allocated/reserved/inactive-split MiB | model")
    for event, real, predicted in zip(events, gpu, model):
        mark = "" if real == predicted else "   <-- differs"
        print(f"  {str(event):32} " + " ".join(f"{v / MiB:8.3f}" for v in real) + " | "
              + " ".join(f"{v / MiB:8.3f}" for v in predicted) + mark)


@pytest.mark.parametrize("expandable", [False, True], ids=["segments", "expandable"])
@pytest.mark.parametrize("name", SEQUENCES)
def test_model_matches_the_gpu(name, expandable):
    events = SEQUENCES[name]
    set_expandable(expandable)
    try:
        gpu = replay_on_gpu(events)
    finally:
        set_expandable(False)
    predicted = replay_on_model(AllocatorModel(expandable_segments=expandable), events)
    show(f"{name} ({'expandable' if expandable else 'segments'})", events, gpu, predicted)
    assert gpu == predicted


def test_a_real_oom_names_the_segment_the_model_predicts():
    # GIVEN this process capped at 1025 MiB with 1010 MiB live
    # WHEN 5 MiB more is asked for THEN PyTorch and the model both report "Tried to allocate 20.00 MiB"
    cap = 1025 * MiB
    _free, total = torch.cuda.mem_get_info()
    retries = torch.cuda.memory_stats().get("num_alloc_retries", 0)
    torch.cuda.set_per_process_memory_fraction(cap / total)
    keep = None
    try:
        keep = torch.empty(1010 * MiB, dtype=torch.uint8, device="cuda")
        with pytest.raises(torch.OutOfMemoryError) as real:
            torch.empty(5 * MiB, dtype=torch.uint8, device="cuda")
        real_retries = torch.cuda.memory_stats()["num_alloc_retries"] - retries
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        del keep
        torch.cuda.empty_cache()
    model = AllocatorModel(capacity=cap)
    model.malloc(1010 * MiB)
    with pytest.raises(AllocatorOutOfMemory) as predicted:
        model.malloc(5 * MiB)
    message = parse(str(real.value))
    print(f"\nreal: {real.value}\nmodel: {predicted.value}")
    assert message is not None and message.requested == predicted.value.alloc_size == 20 * MiB
    assert abs(message.allowed - cap) < 0.01 * cap
    assert real_retries == model.num_alloc_retries == 1
    assert explain(message).cause == "memory-limit"


def test_a_real_oom_larger_than_the_gpu_is_explained():
    _free, total = torch.cuda.mem_get_info()
    with pytest.raises(torch.OutOfMemoryError) as real:
        torch.empty(total * 2, dtype=torch.uint8, device="cuda")
    message = parse(str(real.value))
    print(f"\nreal: {real.value}")
    assert message.format == "torch>=2.2" and abs(message.total - total) < 0.01 * total
    assert message.this_process is not None  # NVML's view is in the message since 2.1
    assert explain(message).cause == "too-large"
