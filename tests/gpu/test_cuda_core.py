"""The core on a real GPU: allocator statistics, the ledger, a real OOM and its post-mortem.

Skipped without CUDA. Run on a device machine with `python -m pytest -q -m cuda tests/gpu -s`
(numbers are printed for docs/gpu-validation.md).
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import oomdoctor
from oomdoctor.probes.ledger import Ledger, LedgerMode

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
REPO = Path(__file__).resolve().parents[2]


def _train(model, optimizer, steps, batch=256):
    for _ in range(steps):
        x = torch.randn(batch, 1024, device="cuda")
        loss = model(x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)).cuda()


def test_report_peak_equals_the_allocator_peak_of_the_same_loop():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    _train(model, optimizer, 2)  # optimizer state exists: both runs below see the same memory
    torch.cuda.reset_peak_memory_stats()
    _train(model, optimizer, 5)
    plain_peak = torch.cuda.max_memory_allocated()
    with oomdoctor.track(quiet=True, device="cuda") as session:
        _train(model, optimizer, 5)
    report = session.report()
    print(f"\nallocator peak {plain_peak} B, oomdoctor peak {report.peak_bytes} B")
    assert report.accounting == "cuda-allocator"
    assert report.steps_total == 5
    # The device view: what NVML sees beside PyTorch's reserved memory, and a note on the gap.
    print(f"aggregates {report.aggregates}; notes {report.notes}")
    assert report.aggregates["torch_reserved_bytes"] >= report.peak_bytes
    if "nvml_used_bytes" in report.aggregates:
        assert report.aggregates["nvml_used_bytes"] >= report.aggregates["torch_reserved_bytes"]
        assert any(note.startswith("NVML shows") for note in report.notes)
    assert abs(report.peak_bytes - plain_peak) <= 0.01 * plain_peak


def test_breakdown_on_cuda_matches_hand_computed_sizes():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters())
    params = sum(p.numel() for p in model.parameters()) * 4
    with oomdoctor.track(quiet=True, device="cuda") as session:
        _train(model, optimizer, 3)
        live = session.breakdown()
    print(f"\nparams {params} B, breakdown {live}")
    assert live["parameters"] == params
    assert live["gradients"] == params
    assert live["optimizer_state"] >= 2 * params  # exp_avg, exp_avg_sq (+ step counters)


def test_ledger_total_matches_memory_allocated():
    torch.cuda.synchronize()
    ledger = Ledger("cuda")
    base = torch.cuda.memory_allocated()
    kept = []
    with LedgerMode(ledger, lambda: "other"):
        for n in (1, 100, 1000, 12345, 1 << 20, 3 << 20):
            kept.append(torch.empty(n, device="cuda"))
        kept.append(kept[-1] * 2)
        kept.append(kept[-2][: 1 << 10])  # a view: no new memory
    allocated = torch.cuda.memory_allocated() - base
    rounded = sum((e.nbytes + 511) // 512 * 512 for e in ledger.entries.values())
    print(f"\nledger {ledger.total} B exact, {rounded} B rounded to 512 B; allocator {allocated} B")
    assert rounded == allocated


def test_a_real_cuda_oom_gets_its_postmortem_and_a_memory_viz_snapshot(tmp_path):
    (tmp_path / "grow.py").write_text(textwrap.dedent("""
        import torch
        chunks = []
        for i in range(1000):
            chunks.append(torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda"))  # line 5
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OOMDOCTOR_DEVICE": "cuda"}
    result = subprocess.run([sys.executable, "-m", "oomdoctor", "run", "--capacity", "2GiB", "--json", "r.json",
                             "grow.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    print(result.stderr[-3000:])
    assert result.returncode == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit"]["exception"].startswith("OutOfMemoryError: CUDA out of memory")
    oom = [f for f in report["findings"] if f["kind"] == "oom"][0]
    assert oom["location"]["line"] == 5
    assert report["device"]["simulated"] and report["device"]["capacity_bytes"] == 2 << 30
    snapshot = tmp_path / "r.oom-snapshot.pickle"
    assert snapshot.exists()
    data = pickle.loads(snapshot.read_bytes())
    assert "segments" in data and "device_traces" in data
