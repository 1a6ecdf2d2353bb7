"""Step time under oomdoctor vs. plain PyTorch, with PyTorch's own memory tools beside it.

    python benchmarks/overhead.py [--quick] [--only cnn,mlp,launch,rl,fragmented] [--device cuda] [--steps N]

Five loops, each measured in this one process, configurations interleaved in rounds so that
machine noise hits all of them alike:
  cnn:    a small CNN, compute-bound steps (~70 ms on a 2-core CPU);
  mlp:    9 blocks of Linear+LayerNorm+GELU at width 128, batch 32: many cheap ops (~3 ms);
  launch: 24 blocks of Linear+LayerNorm+GELU at width 64, batch 4: launch-bound on a GPU, shaped
          like the H100 case in docs/gpu-validation.md but with more, smaller layers;
  rl:     reinforcement learning as in pytorch/examples reinforce.py: a 2-layer policy, one
          forward (batch 1) and one action sample per environment step, one backward and one
          optimizer step per 50-step episode; its unit is the episode;
  fragmented: the mlp loop in a process whose C heap is fragmented (a heap reading costs ms).
Configurations: plain; oomdoctor's default mode (`oomdoctor.track()`); oomdoctor with every op
watched (`exact=True`, what `--capacity` uses on CPU); `torch.profiler.profile(profile_memory=True)`;
`torch.distributed._tools.mem_tracker.MemTracker` (cnn and mlp only; --quick leaves it out).
Prints the median and mean step time and the ratio of each to plain; the mean matters for
oomdoctor, whose sampled steps cost more than the others.

Then, per loop, the Python callbacks into oomdoctor per step: every entry into a function of the
oomdoctor package from outside it (hooks, dispatch mode, saved-tensor hooks, wrappers), counted
with `sys.setprofile` over 40 untimed steps. "unsampled" is the median step (most steps are not
sampled), "sampled" the largest. A constant count on unsampled steps, whatever the number of ops
and modules, is the rule for the default mode (issue 13). If the session exposes a `callbacks`
counter its per-step delta is printed too.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import random
import statistics
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

import oomdoctor

Step = Callable[[], None]


@dataclasses.dataclass
class Case:
    name: str
    build: Callable[[str], tuple[nn.Module, torch.optim.Optimizer, Step]]
    steps: int  # steps per configuration by default
    unit: str = "step"
    mem_tracker: bool = True


def supervised(model: nn.Module, batch: Callable[[], torch.Tensor], device: str):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        x = batch()
        y = torch.randint(0, 10, (x.shape[0],), device=device)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()  # time the work, not the launches

    return model, optimizer, step


def blocks(depth: int, width: int) -> nn.Sequential:
    layers = [nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.GELU()) for _ in range(depth)]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def make_mlp(device: str):
    return supervised(blocks(9, 128).to(device), lambda: torch.randn(32, 128, device=device), device)


def make_launch(device: str):
    return supervised(blocks(24, 64).to(device), lambda: torch.randn(4, 64, device=device), device)


def make_cnn(device: str):
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(64 * 16, 10),
    ).to(device)
    return supervised(model, lambda: torch.randn(32, 3, 64, 64, device=device), device)


EPISODE = 50  # environment steps per episode in the rl loop


def make_rl(device: str):
    """REINFORCE on a stand-in environment: a 4-float state that drifts, as cheap as CartPole's."""
    policy = nn.Sequential(nn.Linear(4, 128), nn.Dropout(0.6), nn.ReLU(), nn.Linear(128, 2), nn.Softmax(dim=1))
    policy.to(device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def episode() -> None:
        state = rng.standard_normal(4).astype(np.float32)
        log_probs, rewards = [], []
        for _ in range(EPISODE):
            probs = policy(torch.from_numpy(state).unsqueeze(0).to(device))
            dist = torch.distributions.Categorical(probs)
            action = dist.sample()
            log_probs.append(dist.log_prob(action))
            state = 0.9 * state + 0.1 * rng.standard_normal(4).astype(np.float32) + (action.item() - 0.5)
            rewards.append(1.0)
        returns = torch.tensor(np.cumsum(rewards[::-1])[::-1].copy(), device=device)
        returns = (returns - returns.mean()) / (returns.std() + 1e-6)
        loss = torch.cat([-lp * r for lp, r in zip(log_probs, returns)]).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()

    return policy, optimizer, episode


def make_fragmented(device: str):
    """The mlp loop in a process whose C heap holds ~100,000 free chunks (a corpus of Python bytes
    of mixed sizes, half of it dropped), where one `mallinfo2` reading costs milliseconds: what
    oomdoctor reads on CPU between watched steps. Last in the list: the heap stays fragmented."""
    rng = random.Random(0)
    corpus = [bytes(rng.randint(600, 4000)) for _ in range(200_000)]
    del corpus[::2]
    model, optimizer, step = make_mlp(device)

    def fragmented_step() -> None:
        step()
        assert corpus  # held for the case's life

    return model, optimizer, fragmented_step


CASES = {
    "cnn": Case("cnn", make_cnn, 60),
    "mlp": Case("mlp", make_mlp, 600),
    "launch": Case("launch", make_launch, 400),
    "rl": Case("rl", make_rl, 60, unit="episode", mem_tracker=False),
    "fragmented": Case("fragmented", make_fragmented, 600, mem_tracker=False),
}


@contextlib.contextmanager
def plain(model, optimizer, device) -> Iterator[None]:
    yield


@contextlib.contextmanager
def oomdoctor_default(model, optimizer, device) -> Iterator[None]:
    with oomdoctor.track(quiet=True, device=device):
        yield


@contextlib.contextmanager
def oomdoctor_exact(model, optimizer, device) -> Iterator[None]:
    with oomdoctor.track(quiet=True, exact=True, device=device):
        yield


@contextlib.contextmanager
def profiler_memory(model, optimizer, device) -> Iterator[None]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities, profile_memory=True):
        yield


@contextlib.contextmanager
def mem_tracker(model, optimizer, device) -> Iterator[Any]:
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


def measure(case: Case, steps: int, rounds: int, device: str, configs: list[str]) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model, optimizer, step = case.build(device)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(5):  # warm up allocator, kernels and optimizer state
        step()
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for name in configs:
            with CONFIGS[name](model, optimizer, device) as between_steps:
                for _ in range(per_round):
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
                    if between_steps is not None:  # bookkeeping a tool needs, not timed
                        between_steps()
            # What a configuration left for the garbage collector (the profiler's events) must not
            # be collected inside the next configuration's timed steps.
            gc.collect()
    return times


PACKAGE = os.path.dirname(os.path.abspath(oomdoctor.__file__)) + os.sep


def _ours(frame: Any) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(PACKAGE)


def count_callbacks(case: Case, device: str, exact: bool, steps: int = 40) -> tuple[list[int], list[int]]:
    """Entries into oomdoctor's code from outside it, per step, and the session's own counter's deltas."""
    torch.manual_seed(0)
    model, optimizer, step = case.build(device)
    counts: list[int] = []
    exposed: list[int] = []
    entries = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal entries
        if event == "call" and _ours(frame) and not _ours(frame.f_back):
            entries += 1

    with oomdoctor.track(quiet=True, exact=exact, device=device) as session:
        for _ in range(steps):
            before = getattr(session, "callbacks", None)
            entries = 0
            sys.setprofile(profile)
            try:
                step()
            finally:
                sys.setprofile(None)
            counts.append(entries)
            after = getattr(session, "callbacks", None)
            if isinstance(before, int) and isinstance(after, int):
                exposed.append(after - before)
    return counts, exposed


def modules_and_ops(case: Case, device: str) -> tuple[int, int]:
    """Module calls and ATen ops in one step: what a per-module or per-op cost would scale with."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    model, optimizer, step = case.build(device)
    calls = 0

    def pre(module: nn.Module, args: Any) -> None:
        nonlocal calls
        calls += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    try:
        with Count():
            step()
    finally:
        handle.remove()
    return calls, Count.ops


def report(case: Case, times: dict[str, list[float]], device: str) -> None:
    if not times:  # --callbacks-only
        print(f"\n{case.name}:")
        callbacks(case, device)
        return
    base_median = statistics.median(times["plain"])
    base_mean = statistics.fmean(times["plain"])
    print(f"\n{case.name}: {len(times['plain'])} {case.unit}s per configuration")
    print(f"  {'configuration':32} {'median':>10} {'ratio':>7} {'mean':>10} {'ratio':>7}")
    for config, values in times.items():
        median, mean = statistics.median(values), statistics.fmean(values)
        print(f"  {config:32} {median * 1e3:8.2f}ms {median / base_median:6.2f}x "
              f"{mean * 1e3:8.2f}ms {mean / base_mean:6.2f}x")
    callbacks(case, device)


def callbacks(case: Case, device: str) -> None:
    calls, ops = modules_and_ops(case, device)
    print(f"  one {case.unit}: {calls} module calls, {ops} ATen ops")
    for label, exact in (("default", False), ("exact", True)):
        counts, exposed = count_callbacks(case, device, exact)
        line = (f"  callbacks into oomdoctor per {case.unit} ({label}): unsampled {statistics.median(counts):.0f}, "
                f"sampled up to {max(counts)}")
        if exposed:
            line += f"; session.callbacks: unsampled {statistics.median(exposed):.0f}, up to {max(exposed)}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="steps per configuration (default: per loop, see --help)")
    parser.add_argument("--rounds", type=int, default=3, help="sessions per configuration, interleaved")
    parser.add_argument("--only", help="comma-separated loops: " + ",".join(CASES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="a fifth of the steps, two rounds, no MemTracker")
    parser.add_argument("--callbacks-only", action="store_true", help="no timing: only the callback counts")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    chosen = args.only.split(",") if args.only else list(CASES)
    unknown = [name for name in chosen if name not in CASES]
    if unknown:
        parser.error(f"--only: unknown loop(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    rounds = 2 if args.quick else args.rounds
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")
    for name in chosen:
        case = CASES[name]
        steps = args.steps or (max(10, case.steps // 5) if args.quick else case.steps)
        configs = [c for c in CONFIGS if c != "MemTracker" or (case.mem_tracker and not args.quick)]
        times = {} if args.callbacks_only else measure(case, steps, rounds, args.device, configs)
        report(case, times, args.device)


if __name__ == "__main__":
    main()
