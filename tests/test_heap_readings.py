"""The default mode on CPU reads the C heap (glibc's `mallinfo2`) between the steps it does not
watch op by op. On a fragmented heap one reading walks long free lists and costs milliseconds:
the readings must then be rationed (a few per second of run, not a few per step), the steps' peaks
stay close to the watched ones, and the report says what it did."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli

SCRIPT = textwrap.dedent("""
    import random, sys, time, torch
    from oomdoctor.core import malloc
    random.seed(0)
    # a corpus held as Python bytes of mixed sizes (each one malloc'd), half of it dropped:
    # glibc keeps ~100,000 free chunks in its bins
    corpus = [bytes(random.randint(600, 4000)) for _ in range(200000)]
    del corpus[::2]
    start = time.perf_counter()
    for _ in range(5):
        malloc.heap_bytes()
    if (time.perf_counter() - start) / 5 < 1e-3:
        print("tidy heap")  # another C library or allocator: nothing to ration here
        sys.exit(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 256), torch.randint(0, 10, (64,))
    for step in range(STEPS):
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
""")
STEPS = 300


def test_a_fragmented_heap_is_read_a_few_times_not_at_every_step(tmp_path: Path):
    # GIVEN a training loop whose process holds a fragmented C heap (a heap reading costs ms)
    (tmp_path / "train.py").write_text(SCRIPT.replace("STEPS", str(STEPS)))
    # WHEN it runs under oomdoctor's default mode
    result = run_cli("run", "--quiet", "--json", "r.json", "train.py", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    if result.stdout == "tidy heap\n":
        pytest.skip("heap readings are cheap with this C library: nothing to ration")
    report = json.loads((tmp_path / "r.json").read_text())
    # THEN the heap was read a few times in all (at 2 readings a step it would be 600), and the
    # report says so, with what a reading costs
    note = next((n for n in report["notes"] if n.startswith("Reading the C heap costs")), None)
    assert note is not None, report["notes"]
    reads, skipped = map(int, re.search(r"read (\d+) times and skipped (\d+) times", note).groups())
    assert reads < STEPS // 10 and skipped > STEPS
    # AND the unwatched steps' peaks, estimated, stay within 10 % of the watched steps' (every
    # step of this loop does the same work), and are marked as estimates
    watched = [s["peak_bytes"] for s in report["steps"] if s["exact"]]
    estimated = [s["peak_bytes"] for s in report["steps"] if not s["exact"]]
    assert watched and estimated
    assert all(abs(p - max(watched)) <= 0.10 * max(watched) for p in estimated), (watched, estimated)
    assert report["steps_total"] == STEPS
