"""An OOM run gets a post-mortem: where, in which phase, what was live, and ranked fixes."""
from __future__ import annotations

import json
import re

from conftest import RECIPES, run_cli
from oomdoctor.diagnosis.remedies import Situation, batch_that_fits, rank

MIB = 1024 * 1024
RECIPE = RECIPES / "oom_big_batch.py"


def _marked_line(path, kind: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if f"# oomdoctor: {kind}" in line:
            return number
    raise AssertionError(f"no marker for {kind}")


def test_oom_finding_names_the_line_phase_and_a_batch_size_that_really_fits(tmp_path):
    # GIVEN a training script whose batch is too large for a 40 MiB device
    result = run_cli("run", "--quiet", "--capacity", "40MiB", "--json", "r.json", str(RECIPE),
                     "--batch-size", "2000", cwd=tmp_path)
    # THEN it fails like python would, and the report has the post-mortem
    assert result.returncode == 1
    report = json.loads((tmp_path / "r.json").read_text())
    oom = [f for f in report["findings"] if f["kind"] == "oom"]
    assert len(oom) == 1
    finding = oom[0]
    assert finding["location"]["line"] == _marked_line(RECIPE, "oom")
    assert finding["location"]["file"].endswith("oom_big_batch.py")
    assert finding["evidence"]["phase"] == "backward"
    assert finding["evidence"]["batch_size"] == 2000
    assert sum(finding["evidence"]["by_category"].values()) == finding["evidence"]["live_bytes"]
    savings = [r["saves_bytes"] or 0 for r in finding["remedies"]]
    assert savings == sorted(savings, reverse=True)  # ranked by the memory they save
    batch = [r for r in finding["remedies"] if r["title"].startswith("Use batch size")]
    assert batch, finding["remedies"]
    size = int(re.search(r"batch size (\d+)", batch[0]["title"]).group(1))
    assert 1 <= size < 2000
    assert "Accumulate gradients over 2 steps" in batch[0]["detail"]
    # WHEN the script runs again at the recommended size on the same device
    again = run_cli("run", "--quiet", "--capacity", "40MiB", str(RECIPE), "--batch-size", str(size), cwd=tmp_path)
    # THEN it fits
    assert again.returncode == 0, again.stderr[-2000:]


def test_batch_remedy_from_a_completed_step_profile():
    s = Situation(by_category={"parameters": 10 * MIB, "gradients": 10 * MIB, "optimizer_state": 20 * MIB,
                               "activations": 30 * MIB, "other": 0},
                  capacity=100 * MIB, batch_size=64, phase="backward", requested=8 * MIB,
                  per_sample_bytes=1 * MIB)
    size, saves = batch_that_fits(s)
    # 90 MiB budget - 40 MiB fixed = 50 samples of 1 MiB
    assert size == 50 and saves == 14 * MIB


def test_no_batch_remedy_without_a_batch_size_or_capacity():
    s = Situation(by_category={"parameters": MIB, "gradients": 0, "optimizer_state": 0, "activations": MIB,
                               "other": 0}, capacity=None, batch_size=8)
    assert batch_that_fits(s) is None


def test_remedies_are_honest_about_what_they_save():
    s = Situation(by_category={"parameters": 10 * MIB, "gradients": 10 * MIB, "optimizer_state": 20 * MIB,
                               "activations": 40 * MIB, "other": 0},
                  capacity=64 * MIB, batch_size=32, phase="forward", requested=4 * MIB,
                  reserved_unallocated=16 * MIB)
    titles = {r.title: r.saves_bytes for r in rank(s)}
    assert titles["Run the forward pass in bf16 autocast"] == 20 * MIB
    assert titles["Free gradients before the forward pass: zero_grad(set_to_none=True)"] == 10 * MIB
    assert titles["Use a lighter optimizer state"] == 10 * MIB  # Adam's state outweighs the parameters
    assert titles["Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"] == 16 * MIB
    # Without a completed step, the batch size is only an upper bound, and says so.
    assert any(t.startswith("Use a batch size of at most") for t in titles)


def test_no_fragmentation_remedy_when_memory_is_really_full():
    s = Situation(by_category={"parameters": MIB, "gradients": 0, "optimizer_state": 0, "activations": MIB,
                               "other": 0}, capacity=4 * MIB, batch_size=4, requested=MIB,
                  reserved_unallocated=MIB // 2)
    assert not any("expandable_segments" in r.title for r in rank(s))
