"""How `oomdoctor lint`'s time grows with the length of a training loop: it must grow linearly.

    python benchmarks/lint_scaling.py                  # loops of 1k .. 100k lines
    python benchmarks/lint_scaling.py --max-lines 20000

Each input is one training loop whose body repeats a block of the statements real loops are made
of (forward and loss, `if`/`else`, `with torch.no_grad()`, a comprehension, an inner loop,
`try`, appends, dict stores, a graph-retaining `total += loss` that lint reports), with fresh names
in every block so that the state lint tracks grows with the loop. Each file is written to a temp
folder and checked with `lint_file` (reading included), best of a few runs for the small sizes;
times are this process's CPU seconds, so that other work on a shared machine does not blur them.
The table gives the time per 1,000 lines and its ratio to the smallest size measured in the same
run: linear growth keeps that ratio near 1 (before the fix, 1k/2k/4k lines took 0.9/4.4/15.7 s).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from oomdoctor.lint import lint_file  # noqa: E402

HEAD = """\
import torch
from torch import nn
model = nn.Linear(8, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = nn.CrossEntropyLoss()
total, seen, history = 0, 0, {}
for step, (x, y) in enumerate(loader):
"""

BLOCK = """\
    out{i} = model(x)
    loss{i} = criterion(out{i}, y)
    if step % 2 == 0:
        seen += loss{i}.item()
    else:
        history["l{i}"] = loss{i}.item()
    with torch.no_grad():
        pred{i} = out{i}.argmax(1)
        hits{i} = [p == t for p, t in zip(pred{i}, y)]
    parts{i} = []
    for chunk in x.split(4):
        parts{i}.append(model(chunk).detach())
    try:
        norm{i} = out{i}.norm().item()
    except RuntimeError:
        norm{i} = 0.0
    total += loss{i}
"""
BLOCK_LINES = BLOCK.count("\n")
TAIL = "    loss0.backward()\n    optimizer.step()\n"


def training_loop(lines: int) -> str:
    """A training loop of about `lines` lines; lint finds one retained graph per block."""
    blocks = max(1, lines // BLOCK_LINES)
    return HEAD + "".join(BLOCK.format(i=i) for i in range(blocks)) + TAIL


def seconds(path: Path, repeat: int) -> tuple[float, int]:
    best, found = float("inf"), 0
    for _ in range(repeat):
        start = time.process_time()
        found = len(lint_file(path))
        best = min(best, time.process_time() - start)
    return best, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-lines", type=int, default=100_000)
    sizes = [n for n in (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
             if n <= parser.parse_args().max_lines]
    print(f"{'lines':>8} {'findings':>9} {'cpu s':>8} {'ms/1k lines':>12} {'vs smallest':>12}")
    baseline = None
    with tempfile.TemporaryDirectory() as folder:
        for lines in sizes:
            path = Path(folder) / f"loop_{lines}.py"
            path.write_text(training_loop(lines))
            actual = path.read_text().count("\n")
            took, found = seconds(path, repeat=3 if lines <= 10_000 else 1)
            per_k = took / actual * 1000
            baseline = baseline or per_k
            print(f"{actual:>8} {found:>9} {took:>8.2f} {per_k * 1000:>12.1f} {per_k / baseline:>11.2f}x")
    print("linear: the last column stays near 1.0x")


if __name__ == "__main__":
    main()
