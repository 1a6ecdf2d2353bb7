"""Whole-process cost of oomdoctor's commands: wall time of fresh processes, vs plain python.

    python benchmarks/startup.py [--runs 7] [--quick]

Each command runs N times as a new process, the commands interleaved run by run so that machine
noise hits all alike; prints the median wall time and the ratio to its baseline:
  - `oomdoctor run` of a script that only imports torch, vs `python` of it (start-up overhead);
  - `oomdoctor run` of a small compute-bound CPU training script (a CNN, ~20 steps), vs `python`
    of it, start-up included (goal: within 1.10x, issue 13);
  - `oomdoctor --help`, `oomdoctor lint` of that script and `oomdoctor explain` of an OOM message,
    vs `python -c pass` (these commands should not import torch at all).
The scripts are written to a temporary folder; oomdoctor watches the CPU (OOMDOCTOR_DEVICE=cpu).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMPORT_ONLY = "import torch\n"

TRAIN = """\
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(64 * 16 * 16, 10),
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range({steps}):
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print("loss", round(loss.item(), 3))
"""

OOM_MESSAGE = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
               "capacity of 79.19 GiB of which 1.02 GiB is free. Including non-PyTorch memory, this process "
               "has 78.16 GiB memory in use. Of the allocated memory 75.50 GiB is allocated by PyTorch, and "
               "1.20 GiB is reserved by PyTorch but unallocated.")


def oomdoctor_command() -> list[str]:
    """The console script next to this interpreter, as a user runs it; else `python -m oomdoctor`."""
    script = Path(sys.executable).with_name("oomdoctor")
    return [str(script)] if script.exists() else [sys.executable, "-m", "oomdoctor"]


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # lint exits 1 when it finds something
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="processes per command")
    parser.add_argument("--steps", type=int, default=20, help="steps of the training script")
    parser.add_argument("--quick", action="store_true", help="3 runs, 10 steps")
    args = parser.parse_args()
    runs, steps = (3, 10) if args.quick else (args.runs, args.steps)
    folder = Path(tempfile.mkdtemp(prefix="oomdoctor-startup-"))
    (folder / "import_torch.py").write_text(IMPORT_ONLY)
    (folder / "train.py").write_text(TRAIN.format(steps=steps))
    env = dict(os.environ, OOMDOCTOR_DEVICE="cpu")
    tool = oomdoctor_command()
    python = [sys.executable]
    commands = {
        "python import_torch.py": python + [str(folder / "import_torch.py")],
        "oomdoctor run import_torch.py": tool + ["run", str(folder / "import_torch.py")],
        "python train.py": python + [str(folder / "train.py")],
        "oomdoctor run train.py": tool + ["run", str(folder / "train.py")],
        "python -c pass": python + ["-c", "pass"],
        "oomdoctor --help": tool + ["--help"],
        "oomdoctor lint train.py": tool + ["lint", str(folder / "train.py")],
        "oomdoctor explain MESSAGE": tool + ["explain", OOM_MESSAGE],
    }
    baselines = {
        "oomdoctor run import_torch.py": "python import_torch.py",
        "oomdoctor run train.py": "python train.py",
        "oomdoctor --help": "python -c pass",
        "oomdoctor lint train.py": "python -c pass",
        "oomdoctor explain MESSAGE": "python -c pass",
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, command in commands.items():  # one untimed run each: page cache, .pyc files
        timed(command, env)
    for _ in range(runs):
        for name, command in commands.items():
            times[name].append(timed(command, env))
    shutil.rmtree(folder, ignore_errors=True)
    print(f"{runs} processes per command, median wall time ({os.cpu_count()} cores, {' '.join(tool)})")
    print(f"  {'command':32} {'median':>9} {'vs baseline':>14} {'extra':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        base = baselines.get(name)
        if base is None:
            print(f"  {name:32} {median:8.3f}s")
            continue
        base_median = statistics.median(times[base])
        print(f"  {name:32} {median:8.3f}s {median / base_median:13.2f}x {median - base_median:+8.3f}s")


if __name__ == "__main__":
    main()
