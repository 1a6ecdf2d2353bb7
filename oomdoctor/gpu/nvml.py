"""The whole-device view through NVML: what PyTorch's allocator cannot see.

Contract: `read_gpus()` returns plain data, one `Gpu` per NVIDIA GPU (name, memory used/total,
utilization, temperature, and the processes using it with their memory), or raises `NoDriver`
(exit code 1) with a one-line reason when there is no NVIDIA driver or no GPU. It uses NVML through
`pynvml` (the `nvidia-ml-py` package); GPUtil is a fallback only when pynvml is missing and GPUtil
imports (it fails on Python 3.12+), and it sees no processes. A field the device does not report
(utilization under MIG or in some VMs, a process's memory in containers) is None.

`nvml_gap_note(nvml_used, torch_reserved)` says, in one sentence, why NVML's "used" is larger than
PyTorch's reserved memory.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import OomdoctorError
from ..sizes import format_bytes

MiB = 1024**2


class NoDriver(OomdoctorError):
    """No NVIDIA driver (or no GPU, or no NVML binding): nothing to show."""

    exit_code = 1


@dataclass
class GpuProcess:
    pid: int
    name: str | None  # the command line, where /proc lets us read it
    memory_bytes: int | None


@dataclass
class Gpu:
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int | None = None
    temperature_c: int | None = None
    processes: list[GpuProcess] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def read_gpus() -> tuple[str, list[Gpu]]:
    """("nvml" or "gputil", the GPUs). Raises NoDriver when there is nothing to read."""
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        return "gputil", _read_gputil()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NoDriver(f"no NVIDIA driver found (NVML: {exc})") from None
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            raise NoDriver("no NVIDIA GPU found (the driver is loaded but lists no device)")
        return "nvml", [_read_device(pynvml, i) for i in range(count)]
    except pynvml.NVMLError as exc:
        raise NoDriver(f"NVML could not read the GPUs: {exc}") from None
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _read_device(pynvml, index: int) -> Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = _optional(pynvml, lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    temperature = _optional(pynvml, lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
    processes: dict[int, GpuProcess] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for p in _optional(pynvml, lambda: getattr(pynvml, getter)(handle)) or []:
            used = p.usedGpuMemory if isinstance(p.usedGpuMemory, int) else None  # None when not reported
            processes.setdefault(p.pid, GpuProcess(p.pid, _process_name(p.pid), used))
    return Gpu(index, name.decode() if isinstance(name, bytes) else name, memory.used, memory.total,
               utilization, temperature, sorted(processes.values(), key=lambda p: -(p.memory_bytes or 0)))


def _optional(pynvml, read):
    try:
        return read()
    except pynvml.NVMLError:  # NOT_SUPPORTED under MIG, in VMs, on some boards
        return None


def _process_name(pid: int) -> str | None:
    # In a container NVML reports host pids, which /proc here may not know (or know as another process).
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part) or None


def _read_gputil() -> list[Gpu]:
    try:
        gputil = importlib.import_module("GPUtil")
    except Exception:  # GPUtil imports distutils, gone in Python 3.12: any failure means "not usable"
        raise NoDriver("NVML is not available: install nvidia-ml-py (pip install nvidia-ml-py)") from None
    try:
        found = gputil.getGPUs()
    except Exception as exc:  # it runs nvidia-smi, which is missing without a driver
        raise NoDriver(f"no NVIDIA driver found (GPUtil: {exc})") from None
    if not found:
        raise NoDriver("no NVIDIA GPU found (GPUtil lists none)")
    return [Gpu(int(g.id), g.name, int(g.memoryUsed * MiB), int(g.memoryTotal * MiB),
                round(g.load * 100), int(g.temperature)) for g in found]


def nvml_gap_note(nvml_used: int, torch_reserved: int) -> str:
    """Why the device's "used" memory (NVML, nvidia-smi) differs from what PyTorch has reserved."""
    gap = nvml_used - torch_reserved
    if gap < 0:
        return (f"NVML shows {format_bytes(-gap)} less in use than PyTorch has reserved: the two were read at "
                "different moments.")
    if gap <= 1024 * MiB:
        return (f"NVML shows {format_bytes(gap)} more in use than PyTorch has reserved: that is about the CUDA "
                "context of this process (typically 300-600 MiB, kernels and library handles included), which "
                "PyTorch's allocator does not count.")
    return (f"NVML shows {format_bytes(gap)} more in use than PyTorch has reserved: the CUDA context takes "
            "300-600 MiB of it; the rest is other processes on this GPU, NCCL communication buffers, or "
            "libraries allocating outside PyTorch (cuBLAS/cuDNN handles, CuPy, JAX, TensorRT). "
            "`oomdoctor gpus` lists the processes.")
