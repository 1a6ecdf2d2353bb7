"""`oomdoctor gpus` shows what NVML sees of each GPU (memory, utilization, processes), and says in
one line, with exit code 1, when there is no NVIDIA driver.

This machine has no GPU, so NVML is FAKED here: a stand-in `pynvml` module injected with
monkeypatch, answering like nvidia-ml-py does. tests/gpu/test_gpus_cuda.py runs the real thing on a
GPU. The no-driver case is real: `python -m oomdoctor gpus` in a subprocess on this machine.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from conftest import run_cli
from oomdoctor.cli import main
from oomdoctor.gpu.nvml import NoDriver, nvml_gap_note, read_gpus

MiB, GiB = 1024**2, 1024**3


def fake_pynvml(gpus: list[dict], init_error: str | None = None) -> ModuleType:
    """A stand-in for nvidia-ml-py's `pynvml` serving `gpus` (dicts of name, used, total, util, temp, procs)."""
    nvml = ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def maybe(value):
        if value is None:
            raise NVMLError("Not Supported")
        return value

    def init():
        if init_error:
            raise NVMLError(init_error)

    nvml.NVMLError = NVMLError
    nvml.NVML_TEMPERATURE_GPU = 0
    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(gpus)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]
    nvml.nvmlDeviceGetName = lambda h: h["name"]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=h["used"], total=h["total"],
                                                             free=h["total"] - h["used"])
    nvml.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=maybe(h["util"]), memory=0)
    nvml.nvmlDeviceGetTemperature = lambda h, sensor: maybe(h["temp"])
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda h: [SimpleNamespace(pid=pid, usedGpuMemory=used)
                                                           for pid, used in h["procs"]]
    nvml.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    return nvml


H100 = {"name": "NVIDIA H100 80GB HBM3", "used": 61 * GiB, "total": 80 * GiB, "util": 97, "temp": 64,
        "procs": [(os.getpid(), 60 * GiB), (999_999_999, None)]}  # this test process, and one hidden by a container
MIG = {"name": b"NVIDIA A100-SXM4-40GB", "used": 512 * MiB, "total": 40 * GiB, "util": None, "temp": None, "procs": []}


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([H100, MIG]))


def test_reads_memory_utilization_and_processes(two_gpus):
    source, gpus = read_gpus()
    assert source == "nvml"
    first, second = gpus
    assert (first.name, first.memory_used_bytes, first.memory_total_bytes) == (
        "NVIDIA H100 80GB HBM3", 61 * GiB, 80 * GiB)
    assert (first.utilization_percent, first.temperature_c) == (97, 64)
    me, hidden = first.processes
    assert (me.pid, me.memory_bytes) == (os.getpid(), 60 * GiB)
    assert "pytest" in me.name or "python" in me.name  # read from /proc/<pid>/cmdline
    assert (hidden.name, hidden.memory_bytes) == (None, None)
    # older bindings return bytes; MIG slices do not report utilization or temperature
    assert (second.name, second.utilization_percent, second.temperature_c) == ("NVIDIA A100-SXM4-40GB", None, None)


def test_cli_prints_a_table_per_gpu(two_gpus, capsys):
    with pytest.raises(SystemExit) as done:
        main(["gpus"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "GPU 0  NVIDIA H100 80GB HBM3   61.00 GiB / 80.00 GiB used (76%)   97% busy   64 °C" in out
    rows = [line.split() for line in out.splitlines()]
    assert [str(os.getpid()), "60.00", "GiB"] == next(r for r in rows if r and r[0] == str(os.getpid()))[:3]
    assert ["999999999", "-", "?"] in rows  # memory and name unknown: shown as such, not as 0
    assert "GPU 1  NVIDIA A100-SXM4-40GB" in out and "no processes" in out


def test_cli_json(two_gpus, capsys):
    with pytest.raises(SystemExit):
        main(["gpus", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert (data["schema"], data["source"]) == ("oomdoctor.gpus/1", "nvml")
    assert [g["memory_total_bytes"] for g in data["gpus"]] == [80 * GiB, 40 * GiB]
    assert data["gpus"][0]["processes"][0]["memory_bytes"] == 60 * GiB


def test_no_driver_is_one_line_and_exit_1(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error="Driver Not Loaded"))
    with pytest.raises(SystemExit) as done:
        main(["gpus"])
    assert done.value.code == 1
    assert capsys.readouterr().err == "oomdoctor: error: no NVIDIA driver found (NVML: Driver Not Loaded)\n"


def test_a_driver_without_gpus_is_no_driver_either(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    with pytest.raises(NoDriver, match="no NVIDIA GPU found"):
        read_gpus()


def test_gputil_is_the_fallback_only_without_pynvml(monkeypatch):
    gputil = ModuleType("GPUtil")
    gputil.getGPUs = lambda: [SimpleNamespace(id=0, name="NVIDIA T4", memoryUsed=1024.0, memoryTotal=15360.0,
                                              load=0.5, temperature=41.0)]
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    monkeypatch.setitem(sys.modules, "GPUtil", gputil)
    source, (gpu,) = read_gpus()
    assert (source, gpu.name, gpu.memory_used_bytes, gpu.utilization_percent) == ("gputil", "NVIDIA T4", GiB, 50)


def test_without_pynvml_and_without_a_working_gputil_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "GPUtil", None)  # as on Python 3.12+, where its import fails
    with pytest.raises(NoDriver, match="pip install nvidia-ml-py"):
        read_gpus()


@pytest.mark.skipif(Path("/proc/driver/nvidia").exists(), reason="this machine has an NVIDIA driver")
def test_real_run_on_this_machine_without_a_driver():
    result = run_cli("gpus")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("oomdoctor: error: no NVIDIA driver found") and result.stderr.count("\n") == 1


def test_gap_note_explains_nvml_used_versus_pytorch_reserved():
    assert "CUDA context" in nvml_gap_note(10 * GiB + 400 * MiB, 10 * GiB)
    crowded = nvml_gap_note(30 * GiB, 10 * GiB)
    assert "20.00 GiB" in crowded and "other processes" in crowded and "NCCL" in crowded
    assert "different moments" in nvml_gap_note(1 * GiB, 2 * GiB)
