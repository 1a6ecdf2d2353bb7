"""On a real GPU, `oomdoctor gpus --json` lists the GPU PyTorch sees, with the memory this process holds."""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import run_cli
from oomdoctor.gpu.nvml import nvml_gap_note

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MiB = 1024**2


def test_gpus_json_lists_this_gpu_and_its_memory():
    held = torch.empty(512 * MiB, dtype=torch.uint8, device="cuda")  # so this process holds memory
    result = run_cli("gpus", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    gpu = data["gpus"][torch.cuda.current_device()]
    print(f"\n{json.dumps(data, indent=1)}\n{nvml_gap_note(gpu['memory_used_bytes'], torch.cuda.memory_reserved())}")
    assert data["source"] == "nvml"
    assert gpu["name"] == torch.cuda.get_device_name()
    assert abs(gpu["memory_total_bytes"] - torch.cuda.mem_get_info()[1]) < 0.01 * gpu["memory_total_bytes"]
    assert gpu["memory_used_bytes"] >= torch.cuda.memory_reserved() >= held.numel()
    mine = [p for p in gpu["processes"] if p["pid"] == os.getpid()]
    if mine and mine[0]["memory_bytes"] is not None:  # containers may hide pids or per-process memory
        assert mine[0]["memory_bytes"] >= torch.cuda.memory_reserved()


def test_gpus_table_names_the_gpu():
    result = run_cli("gpus")
    assert result.returncode == 0, result.stderr
    print("\n" + result.stdout)
    assert torch.cuda.get_device_name() in result.stdout
