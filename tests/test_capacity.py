"""`--capacity SIZE` reproduces out-of-memory on a machine without that little memory (or a GPU)."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

import oomdoctor
from conftest import run_cli

KIB = 1024


def test_oom_is_raised_exactly_past_the_capacity():
    kept = []
    with pytest.raises(torch.OutOfMemoryError) as caught:
        with oomdoctor.track(capacity=64 * KIB, quiet=True):
            for _ in range(4):
                kept.append(torch.empty(16 * KIB, dtype=torch.uint8))  # 4 x 16 KiB = exactly 64 KiB: fits
            torch.empty(1, dtype=torch.uint8)  # one byte more does not
    message = str(caught.value)
    assert "Tried to allocate 1 bytes" in message
    assert "total capacity of 64.00 KiB of which 0 bytes is free" in message


def test_the_simulated_oom_is_a_real_torch_out_of_memory_error():
    # Code that handles CUDA OOMs (except torch.cuda.OutOfMemoryError) handles this one too.
    with oomdoctor.track(capacity="1MiB", quiet=True):
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.zeros(2 * 1024 * 1024, dtype=torch.uint8)
        ok = torch.zeros(512 * 1024, dtype=torch.uint8)  # memory is back after the failure
    assert ok.numel() == 512 * 1024


def test_freed_memory_can_be_used_again():
    with oomdoctor.track(capacity=100 * KIB, quiet=True):
        for _ in range(20):
            x = torch.empty(80 * KIB, dtype=torch.uint8)
            del x


def test_cli_capacity_reports_the_oom_and_keeps_python_exit_code(tmp_path):
    (tmp_path / "big.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        model = nn.Linear(512, 512)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for batch in (8, 16, 4096):
            loss = model(torch.randn(batch, 512)).sum()
            loss.backward()
            opt.step()
            opt.zero_grad()
    """))
    result = run_cli("run", "--capacity", "4MiB", "--json", "r.json", "big.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "torch.OutOfMemoryError" in result.stderr  # python's traceback of the user's error
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit"]["exception"].startswith("OutOfMemoryError: CPU out of memory")
    assert report["device"] == {"type": "cpu", "name": report["device"]["name"], "capacity_bytes": 4 * 1024 * 1024,
                                "simulated": True, "index": None}
    assert report["steps_total"] == 2  # the two batches that fit
    assert report["peak_bytes"] <= 4 * 1024 * 1024
