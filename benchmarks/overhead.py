"""Step time under oomdoctor vs. plain PyTorch, with PyTorch's own memory tools beside it.

    python benchmarks/overhead.py [--steps 600] [--only mlp|cnn] [--device cuda]

Two loops, each measured in this one process, configurations interleaved in rounds so that
machine noise hits all of them alike:
  (a) cnn: a small CNN, compute-bound steps (~70 ms on a 2-core CPU);
  (b) mlp: 9 blocks of Linear+LayerNorm+GELU at width 128, batch 32: many cheap ops (~3 ms).
Configurations: plain; oomdoctor's default mode (`oomdoctor.track()`); oomdoctor with every op
watched (`exact=True`, what `--capacity` uses on CPU); `torch.profiler.profile(profile_memory=True)`;
`torch.distributed._tools.mem_tracker.MemTracker`. Prints the median and mean step time and the
ratio of each to plain. The mean matters for oomdoctor: its sampled steps cost more than the others.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Callable, Iterator

import torch
from torch import nn

import oomdoctor


def make_mlp(device: str) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    blocks = [nn.Sequential(nn.Linear(128, 128), nn.LayerNorm(128), nn.GELU()) for _ in range(9)]
    model = nn.Sequential(*blocks, nn.Linear(128, 10)).to(device)
    return model, lambda: torch.randn(32, 128, device=device)


def make_cnn(device: str) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(64 * 16, 10),
    ).to(device)
    return model, lambda: torch.randn(32, 3, 64, 64, device=device)


@contextlib.contextmanager
def plain(model, optimizer) -> Iterator[None]:
    yield


@contextlib.contextmanager
def oomdoctor_default(model, optimizer) -> Iterator[None]:
    with oomdoctor.track(quiet=True):
        yield


@contextlib.contextmanager
def oomdoctor_exact(model, optimizer) -> Iterator[None]:
    with oomdoctor.track(quiet=True, exact=True):
        yield


@contextlib.contextmanager
def profiler_memory(model, optimizer) -> Iterator[None]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, profile_memory=True):
        yield


@contextlib.contextmanager
def mem_tracker(model, optimizer) -> Iterator[None]:
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        yield tracker.reset_mod_stats  # it refuses a module's second forward without a reset


CONFIGS = {
    "plain": plain,
    "oomdoctor (default)": oomdoctor_default,
    "oomdoctor (exact)": oomdoctor_exact,
    "torch.profiler(profile_memory)": profiler_memory,
    "MemTracker": mem_tracker,
}


def measure(make, steps: int, rounds: int, device: str) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model, batch = make(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}

    def step() -> None:
        x = batch()
        y = torch.randint(0, 10, (x.shape[0],), device=device)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()  # time the work, not the launches

    for _ in range(5):  # warm up allocator, kernels and optimizer state
        step()
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for name, config in CONFIGS.items():
            with config(model, optimizer) as between_steps:
                for _ in range(per_round):
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
                    if between_steps is not None:  # bookkeeping a tool needs, not timed
                        between_steps()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="steps per configuration (mlp; cnn uses a tenth)")
    parser.add_argument("--rounds", type=int, default=3, help="sessions per configuration, interleaved")
    parser.add_argument("--only", choices=["mlp", "cnn"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")
    loops = {"cnn": (make_cnn, max(10, args.steps // 10)), "mlp": (make_mlp, args.steps)}
    for name, (make, steps) in loops.items():
        if args.only and name != args.only:
            continue
        times = measure(make, steps, args.rounds, args.device)
        base_median = statistics.median(times["plain"])
        base_mean = statistics.fmean(times["plain"])
        print(f"\n{name}: {len(times['plain'])} steps per configuration")
        print(f"  {'configuration':32} {'median':>10} {'ratio':>7} {'mean':>10} {'ratio':>7}")
        for config, values in times.items():
            median, mean = statistics.median(values), statistics.fmean(values)
            print(f"  {config:32} {median * 1e3:8.2f}ms {median / base_median:6.2f}x "
                  f"{mean * 1e3:8.2f}ms {mean / base_mean:6.2f}x")


if __name__ == "__main__":
    main()
