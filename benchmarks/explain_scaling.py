"""How `oomdoctor explain` scales with the size of a log: time against the number of OOM lines.

    python benchmarks/explain_scaling.py            # 10k .. 100k lines, in process
    python benchmarks/explain_scaling.py --cli      # also `oomdoctor explain --file` on the largest

Two logs per size: short OOM lines (`RuntimeError: CUDA out of memory.`, about 25 bytes a line as
in the report of issue 12: 40k lines = 1 MB), and a mixed log (full PyTorch >= 2.2 messages, CUDA
errors, plain lines). The baseline is the smallest log of each kind, measured in the same run:
for linear work, time per line stays at x1.0 of it as the log grows (quadratic work doubles it
with each doubling of the log).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oomdoctor.gpu.explain import explain, find_messages  # noqa: E402

SIZES = (10_000, 20_000, 40_000, 100_000)
FULL = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.00 MiB. GPU 0 has a total capacity of "
        "23.65 GiB of which 11.06 MiB is free. Of the allocated memory 22.90 GiB is allocated by PyTorch, and "
        "194.87 MiB is reserved by PyTorch but unallocated.")
LOGS = {
    "short OOM lines": ["OOM: CUDA out of memory."],
    "mixed log": [FULL, "RuntimeError: CUDA error: out of memory", "RuntimeError: XPU out of memory.",
                  "epoch 3 step 1200 loss 0.41"],
}


def log_of(kind: str, lines: int) -> str:
    block = LOGS[kind]
    return "\n".join(block[i % len(block)] for i in range(lines)) + "\n"


def seconds(text: str) -> float:
    best = float("inf")
    for _ in range(3 if len(text) < 2_000_000 else 1):
        start = time.perf_counter()
        messages = find_messages(text)
        explain(messages[-1])
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", action="store_true", help="also time the command on the largest log")
    options = parser.parse_args()
    print(f"{'log':<16} {'lines':>8} {'MB':>6} {'seconds':>8} {'us/line':>8} {'vs baseline':>11}")
    for kind in LOGS:
        baseline = None
        for lines in SIZES:
            text = log_of(kind, lines)
            took = seconds(text)
            per_line = took / lines * 1e6
            baseline = baseline or per_line
            print(f"{kind:<16} {lines:>8} {len(text) / 1e6:>6.2f} {took:>8.3f} {per_line:>8.2f} "
                  f"{per_line / baseline:>10.2f}x")
    if options.cli:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "train.log"
            path.write_text(log_of("mixed log", SIZES[-1]))
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "oomdoctor", "explain", "--file", str(path)], env=env,
                                  capture_output=True, text=True)
            took = time.perf_counter() - start
            startup = time.perf_counter()
            subprocess.run([sys.executable, "-m", "oomdoctor", "--version"], env=env, capture_output=True)
            startup = time.perf_counter() - startup
            print(f"oomdoctor explain --file ({SIZES[-1]} lines): {took:.2f} s (exit {done.returncode}); "
                  f"the command's start-up alone (--version): {startup:.2f} s")


if __name__ == "__main__":
    main()
