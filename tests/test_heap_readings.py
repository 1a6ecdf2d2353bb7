"""The default mode on CPU reads the C heap (glibc's `mallinfo2`) between the steps it does not
watch op by op. On a fragmented heap one reading walks long free lists and costs milliseconds:
the readings must then be rationed (a few per second of run, not a few per step), the steps' peaks
stay close to the watched ones, and the report says what it did."""
from __future__ import annotations

import json
import re
import statistics
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from oomdoctor.core import malloc
from oomdoctor.core.heap import NOISE_BYTES, Heap

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
    if (time.perf_counter() - start) / 5 < 5e-3:
        print("tidy heap")  # another C library or allocator: too cheap to need rationing here
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
    note = next((n for n in report["notes"] if n.startswith("The C heap was read")), None)
    assert note is not None, report["notes"]
    reads, skipped = (int(n.replace(",", "")) for n in
                      re.search(r"read ([\d,]+) times and ([\d,]+) readings were skipped", note).groups())
    assert reads < STEPS // 10 and skipped > STEPS
    # AND the unwatched steps' peaks, estimated and marked so, stay near the warm-up steps' (every
    # step of this loop does the same work, and the first 4 are watched op by op before any heap
    # reading enters a total): never below them, nor far above. Not exactly: with a reading every
    # second or so, a reading that caught the heap moving (by up to ~0.5 MB, a third of this tiny
    # program, on a loaded machine) is carried until the next; measured here, the median estimate
    # was 1.00-1.28x the real peak and the largest 1.75x
    watched = statistics.median(s["peak_bytes"] for s in report["steps"] if s["exact"] and s["index"] < 4)
    estimated = [s["peak_bytes"] / watched for s in report["steps"] if not s["exact"]]
    assert estimated and min(estimated) >= 0.9, estimated
    assert statistics.median(estimated) <= 1.5 and max(estimated) <= 2.5, estimated
    assert report["steps_total"] == STEPS


def test_a_heap_that_moves_more_than_the_tensors_is_not_used():
    # GIVEN a watched window where the heap beyond the tensors moves by more than the limit
    heap = Heap()
    heap.new_window()
    heap.calibrate(1_000_000, step=2, peak=100_000)
    assert heap.offset == 1_000_000 and not heap.unreliable
    heap.calibrate(1_000_000 + NOISE_BYTES + 1, step=2, peak=100_000)
    # THEN the heap is not used from now on, and how far it moved is kept for the report
    assert heap.unreliable and heap.offset is None and heap.noise == NOISE_BYTES + 1
    assert heap.total(known=5_000) is None


def test_a_window_in_which_torch_compile_compiled_does_not_judge_the_heap():
    # GIVEN a watched window in which torch.compile generated code (the heap moves, once)
    heap = Heap()
    heap.new_window()
    heap.compiled()
    heap.calibrate(1_000_000, step=2, peak=100_000)
    heap.calibrate(9_000_000, step=2, peak=100_000)
    # THEN the heap stays in use, calibrated on the latest reading
    assert not heap.unreliable and heap.offset == 9_000_000 and heap.noise == 0
    # AND the next window is judged again
    heap.new_window()
    heap.calibrate(9_000_000, step=2, peak=100_000)
    heap.calibrate(9_000_000 + 2 * NOISE_BYTES, step=2, peak=100_000)
    assert heap.unreliable


def test_the_total_is_never_below_what_the_ledger_knows_is_alive():
    heap = Heap()
    heap.calibrate(10 << 30, step=0, peak=0)  # an offset above the whole heap: noise
    assert heap.total(known=4_108) == 4_108


@pytest.mark.skipif(not malloc.available(), reason="no glibc mallinfo2: the default mode does not read the heap")
def test_host_memory_growing_beside_the_tensors_is_said(tmp_path: Path):
    # GIVEN a training loop that also keeps 256 KiB of Python bytes a step (a log of raw samples)
    (tmp_path / "train.py").write_text(textwrap.dedent("""
        import torch
        model = torch.nn.Linear(64, 64)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        kept = []
        for step in range(12):
            model(torch.randn(32, 64)).sum().backward()
            opt.step()
            opt.zero_grad()
            kept.extend(bytes(4096) for _ in range(64))
    """))
    # WHEN it runs in the default mode, whose totals between watched steps come from the C heap
    result = run_cli("run", "--quiet", "--json", "r.json", "train.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    # THEN the report says the heap grew beside the tensors, by about what the loop kept
    note = next((n for n in report["notes"] if n.startswith("While every op was watched, the C heap")), None)
    assert note is not None, report["notes"]
    grew = float(re.search(r"grew by about ([\d.]+) KiB a step", note).group(1))
    assert 200 <= grew <= 320, note
    # AND no memory-growth finding blames tensors for it
    assert not [f for f in report["findings"] if f["kind"] == "memory-growth"]


def test_the_drift_is_measured_between_watched_steps():
    heap = Heap()
    for step, low in ((2, 1_000_000), (3, 1_300_000), (4, 1_600_000)):
        heap.new_window()
        heap.calibrate(low + 50_000, step=step, peak=10_000_000)
        heap.calibrate(low, step=step, peak=10_000_000)
    assert heap.drift == 300_000


RL = textwrap.dedent("""
    import numpy as np, torch
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    policy = torch.nn.Sequential(torch.nn.Linear(4, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2),
                                 torch.nn.Softmax(dim=1))
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for length in [30, 40, 25, 35, 30, 45, 20, 300, 40, 30, 35, 25]:  # one long episode, unwatched
        frames = rng.standard_normal((length, 64, 64))  # the episode's observations: a noisy heap
        log_probs = []
        for t in range(length):
            probs = policy(torch.from_numpy(frames[t, 0, :4].astype(np.float32)).unsqueeze(0))
            dist = torch.distributions.Categorical(probs)
            log_probs.append(dist.log_prob(dist.sample()))
        loss = -torch.cat(log_probs).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        del frames
""")


def test_a_long_unwatched_episode_is_estimated_by_its_forwards(tmp_path: Path):
    # GIVEN reinforcement learning with tiny tensors beside large numpy observations (the heap
    # moves more than the tensors, so it is not used), and one episode 10x longer than the
    # watched ones, on a step the per-op view does not watch
    (tmp_path / "rl.py").write_text(RL)
    reports = {}
    for mode in ("default", "exact"):
        extra = ["--exact"] if mode == "exact" else []
        result = run_cli("run", "--quiet", *extra, "--json", f"{mode}.json", "rl.py", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        reports[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    default, exact = reports["default"], reports["exact"]
    if not any(n.startswith("The C heap moved by more than the tensors") for n in default["notes"]):
        pytest.skip("the heap stayed quiet enough here to be used: another path of the estimate")
    # THEN the long episode's estimate scales with its 300 forwards (the watched steps had 20-45),
    # close to what --exact measured, and is marked as an estimate
    long_default = next(s for s in default["steps"] if s["index"] == 7)
    long_exact = next(s for s in exact["steps"] if s["index"] == 7)
    assert not long_default["exact"]
    assert 0.75 * long_exact["peak_bytes"] <= long_default["peak_bytes"] <= 1.25 * long_exact["peak_bytes"]
    assert default["peak_step"] == 7


def test_an_unwatched_step_borrows_the_headroom_of_the_window_of_its_own_role(tmp_path: Path):
    # GIVEN the bundled recipe: an MLP trained with AdamW, whose peak is inside the optimizer step
    # (its temporaries above the updated state), not in the forward and backward
    reports = {}
    for mode in ("default", "exact"):
        extra = ["--exact"] if mode == "exact" else []
        result = run_cli("run", "--quiet", *extra, "--json", f"{mode}.json", str(REPO / "recipes" / "train_mlp.py"),
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        reports[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    exact = max(s["peak_bytes"] for s in reports["exact"]["steps"][2:])
    # WHEN the default mode estimates the steps it did not watch op by op
    estimated = [s for s in reports["default"]["steps"] if not s["exact"]]
    assert estimated
    # THEN each estimate is the real peak within 2 % (the optimizer's headroom added to the
    # optimizer's readings, not to the forward's: that read +6 %, and without the optimizer's
    # window -18 %)
    for step in estimated:
        assert abs(step["peak_bytes"] / exact - 1) < 0.02, (step["index"], step["peak_bytes"], exact)
    # AND the bytes above the readings are the optimizer's, as --exact counts them
    last = estimated[-1]
    assert last["by_category"]["optimizer_state"] > 0.55 * last["peak_bytes"], last
    assert last["by_category"]["activations"] < 0.05 * last["peak_bytes"], last
