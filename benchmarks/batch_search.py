"""How many trials, and how long, to find the largest batch size: oomdoctor against the usual ways.

    python benchmarks/batch_search.py            # simulated comparison, then real runs
    python benchmarks/batch_search.py --no-real  # simulated comparison only

1. Simulated. One memory model (peak = fixed + per_sample*b; the larger of two such lines where
   the peak moves from the optimizer step to backward, as in recipes/batch_mlp.py; that kink with
   every tensor rounded up to 512 bytes as the CUDA caching allocator does; a b^2 term) and one
   capacity per row, the largest fitting size planted at ~30, ~1000 and ~20000. oomdoctor's
   trials report their moments (the bytes at each local peak of the step, as real trials under a
   simulated capacity do: oomdoctor/batch/moments.py). Methods:
   - oomdoctor: `oomdoctor.batch.search`, 2 steps per trial; `oomdoctor batch` starts a fresh
     process per trial (start-up cost included), `find_batch_size` runs trials in-process;
   - Lightning `binsearch`: double from 2 until OOM, then binary search, 3 steps per trial, after
     `_run_binsearch_scaling` in lightning/pytorch/tuner/batch_size_scaling.py, RE-IMPLEMENTED here
     (Lightning is not a dependency);
   - Accelerate `find_executable_batch_size`: start high, x0.9 on each OOM, the real function from
     `accelerate` when it is installed, else a re-implementation (the output says which).
   Time model: a step at batch b takes STEP_S + SAMPLE_S*b; an OOM trial fails half-way through
   its first step; a process start (oomdoctor only) costs START_S, measured on this machine.
2. Real. `oomdoctor batch` on recipes/batch_mlp.py with `--capacity`: trials, wall time, and the
   answer checked by running the script at the maximum and one above it; `find_batch_size` on a
   small MLP in-process, checked the same way.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oomdoctor.batch.search import Trial, search  # noqa: E402

STEP_S = 0.05  # fixed part of one training step, seconds
SAMPLE_S = 50e-6  # per sample: a mid-size model on a GPU
START_S = 3.0  # a fresh `python -m oomdoctor run` process up to the script's first step: about the
# seconds of a batch-size-1 trial in the real runs below (torch and oomdoctor imports, the optimizer's)
OURS_STEPS, LIGHTNING_STEPS = 2, 3
CPU = {"CUDA_VISIBLE_DEVICES": ""}  # the real runs simulate the capacity on the CPU, GPU or not


SHAPES = ("linear", "kinked", "kinked, rounded", "quadratic")


class Workload:
    """A memory curve with a capacity whose largest fitting batch size is `target`."""

    def __init__(self, target: int, shape: str):
        self.target, self.shape = target, shape
        self.per_sample = 4 * 2**20  # 4 MiB per sample near the maximum
        self.fixed = 6 * 2**30  # weights, gradients, optimizer state
        # quadratic: a b x b matrix taking a third of the per-sample memory at the maximum
        self.quadratic = self.per_sample // 3 // target if shape == "quadratic" else 0
        self.capacity = self.peak(target) + self.per_sample // 3

    def moments(self, b: int) -> tuple[int, ...]:
        """Bytes at the step's local peaks: backward's (activations) and, kinked, the optimizer
        step's (temporaries the size of the weights, a little per sample), which dominates small
        batches up to ~0.57 of the maximum."""
        steep = self.fixed + self.per_sample * b + self.quadratic * b * b
        if not self.shape.startswith("kinked"):
            return (steep,)
        flat = self.fixed + self.per_sample * self.target // 2 + self.per_sample // 8 * b
        if self.shape == "kinked, rounded":  # 64 tensors a moment, each rounded up to 512 bytes
            return tuple(sum(-(-(v // 64 + i) // 512) * 512 for i in range(64)) for v in (steep, flat))
        return steep, flat

    def peak(self, b: int) -> int:
        return max(self.moments(b))

    def fits(self, b: int) -> bool:
        return self.peak(b) <= self.capacity


def step_seconds(b: int) -> float:
    return STEP_S + SAMPLE_S * b


def run_oomdoctor(w: Workload, start_s: float = START_S) -> tuple[int, int, float]:
    spent = 0.0

    def trial(b: int) -> Trial:
        nonlocal spent
        ok = w.fits(b)
        spent += start_s + (OURS_STEPS * step_seconds(b) if ok else step_seconds(b) / 2)
        return Trial(b, ok, w.peak(b) if ok else w.capacity, moments=w.moments(b) if ok else ())

    result = search(trial, capacity=w.capacity)
    return result.max_batch_size, result.measured_trials, spent


def run_lightning_binsearch(w: Workload, init_val: int = 2, max_trials: int = 25) -> tuple[int, int, float]:
    """Lightning's `_run_binsearch_scaling`, re-implemented: double while trials succeed, then
    bisect between the last success and the first failure."""
    low, high, size, count, trials, spent = 1, None, init_val, 0, 0, 0.0
    while True:
        trials += 1
        if w.fits(size):
            spent += LIGHTNING_STEPS * step_seconds(size)
            count += 1
            if count > max_trials:
                break
            low = size
            if high:
                if high - low <= 1:
                    break
                size = (high + low) // 2
            else:
                size *= 2
        else:
            spent += step_seconds(size) / 2
            high = size
            size = (high + low) // 2
            if high - low <= 1:
                break
    return size, trials, spent


def accelerate_decay() -> tuple[Callable, str]:
    try:
        from accelerate.utils import find_executable_batch_size

        return find_executable_batch_size, "accelerate.utils.find_executable_batch_size (real)"
    except ImportError:
        def find_executable_batch_size(function: Callable, starting_batch_size: int = 128) -> Callable:
            def run() -> int:
                batch_size = starting_batch_size
                while True:
                    if batch_size == 0:
                        raise RuntimeError("No executable batch size found, reached zero.")
                    try:
                        return function(batch_size)
                    except RuntimeError as exc:
                        if " out of memory." not in str(exc):
                            raise
                        batch_size = int(batch_size * 0.9)
            return run

        return find_executable_batch_size, "x0.9 decay re-implemented (accelerate not installed)"


def run_accelerate(w: Workload, decorate: Callable) -> tuple[int, int, float]:
    start = 4096 if w.target < 4096 else 65536
    calls: list[int] = []
    spent = 0.0

    def train(batch_size: int) -> int:
        nonlocal spent
        calls.append(batch_size)
        if not w.fits(batch_size):
            spent += step_seconds(batch_size) / 2
            raise torch.OutOfMemoryError("CUDA out of memory. (simulated)")
        spent += OURS_STEPS * step_seconds(batch_size)  # its first steps; the training goes on from here
        return batch_size

    found = decorate(train, starting_batch_size=start)()
    return found, len(calls), spent


def simulated() -> None:
    decorate, accelerate_source = accelerate_decay()
    print(f"Simulated: step = {STEP_S} s + {SAMPLE_S * 1e6:.0f} us x batch; oomdoctor process start {START_S:.1f} s; "
          f"Lightning binsearch re-implemented; Accelerate: {accelerate_source}.")
    header = f"{'workload':<27} {'method':<20} {'trials':>6} {'answer':>7} {'exact':>6} {'seconds':>8}"
    print(header)
    print("-" * len(header))
    worst = 0
    for shape in SHAPES:
        for target in (30, 1000, 20000):
            w = Workload(target, shape)
            truth = max(b for b in range(max(1, target - 50), target + 50) if w.fits(b))
            name = f"{shape}, max {truth}"
            rows = [("oomdoctor batch", run_oomdoctor(w)), ("find_batch_size", run_oomdoctor(w, start_s=0)),
                    ("Lightning binsearch", run_lightning_binsearch(w)),
                    ("Accelerate x0.9", run_accelerate(w, decorate))]
            for method, (answer, trials, seconds) in rows:
                exact = "yes" if answer == truth else f"{answer / truth:.0%}"
                if method == "find_batch_size":
                    worst = max(worst, trials) if answer == truth else float("inf")
                print(f"{name:<27} {method:<20} {trials:>6} {answer:>7} {exact:>6} {seconds:>8.1f}")
                name = ""
    print("exact: the answer is the largest size that fits; else the answer as a share of it.")
    print(f"oomdoctor's worst case over these shapes: {worst} measured trials, every answer exact.\n")


def oomdoctor(*args: str, cwd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120", **CPU}
    return subprocess.run([sys.executable, "-m", "oomdoctor", *args], cwd=cwd, env=env, capture_output=True, text=True)


def real() -> None:
    recipe = str(REPO / "recipes" / "batch_mlp.py")
    print(f"Real: oomdoctor batch --flag --batch-size --capacity SIZE recipes/batch_mlp.py [--width W] "
          f"(CPU, simulated capacity; torch {torch.__version__})")
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        plain = subprocess.run([sys.executable, recipe, "--width", "128", "--device", "cpu"], capture_output=True,
                               text=True)
        print(f"  the recipe alone (python, 3 steps of 1024): {time.perf_counter() - started:.1f} s, exit {plain.returncode}")
        for capacity, width in (("1.5MB", "128"), ("8MiB", "128"), ("12MiB", "512"), ("64MiB", "512")):
            path = os.path.join(folder, "batch.json")
            started = time.perf_counter()
            done = oomdoctor("batch", "--flag", "--batch-size", "--capacity", capacity, "--json", path, recipe,
                             "--width", width, cwd=folder)
            wall = time.perf_counter() - started
            if done.returncode != 0:
                print(done.stdout + done.stderr)
                raise SystemExit(f"oomdoctor batch failed (exit {done.returncode})")
            data = json.loads(Path(path).read_text())
            best = data["max_batch_size"]
            measured = [t for t in data["trials"] if t["source"] == "measured"]
            check = {b: oomdoctor("run", "--quiet", "--steps", "2", "--capacity", capacity, recipe, "--width", width,
                                  "--batch-size", str(b), cwd=folder).returncode for b in (best, best + 1)}
            verdict = "exact" if check == {best: 0, best + 1: 1} else f"NOT exact: {check}"
            sizes = ", ".join(f"{t['batch_size']}{'' if t['fits'] else ' OOM'}" for t in measured)
            print(f"  --capacity {capacity:>6} --width {width}: max {best} ({verdict}), recommended "
                  f"{data['recommended_batch_size']}; {len(measured)} trials [{sizes}], "
                  f"{sum(t['seconds'] for t in measured):.1f} s in trials, {wall:.1f} s wall")


def real_in_process() -> None:
    """`find_batch_size` on a small MLP (as tests/test_find_batch_size.py), checked size by size."""
    import oomdoctor
    from torch import nn

    def train(batch_size: int, steps: int = 1000) -> None:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(steps):
            x, y = torch.randn(batch_size, 64), torch.randint(0, 10, (batch_size,))
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def fits(batch_size: int, capacity: int) -> bool:
        try:
            with oomdoctor.track(capacity=capacity, device="cpu", quiet=True):
                train(batch_size, steps=2)
        except torch.OutOfMemoryError:
            return False
        return True

    for capacity in (2 * 2**20, 16 * 2**20):
        started = time.perf_counter()
        result = oomdoctor.find_batch_size(train, capacity=capacity, device="cpu", quiet=True)
        wall = time.perf_counter() - started
        best = result.max_batch_size
        verdict = "exact" if fits(best, capacity) and not fits(best + 1, capacity) else "NOT exact"
        sizes = ", ".join(f"{t.batch_size}{'' if t.fits else ' OOM'}" for t in result.trials if t.source == "measured")
        print(f"  find_batch_size, MLP 64-256-10, {capacity // 2**20} MiB: max {best} ({verdict}); "
              f"{result.measured_trials} trials [{sizes}], {wall:.1f} s")


if __name__ == "__main__":
    simulated()
    if "--no-real" not in sys.argv:
        real()
        real_in_process()
