"""`oomdoctor gpus`: memory, utilization and processes of each NVIDIA GPU, through NVML.

Output goes to stdout: a table per GPU, or with `--json`
`{"schema": "oomdoctor.gpus/1", "source": "nvml"|"gputil", "gpus": [{index, name, memory_used_bytes,
memory_total_bytes, utilization_percent, temperature_c, processes: [{pid, name, memory_bytes}]}]}`.
Without an NVIDIA driver (or GPU, or NVML binding): one error line, exit code 1.
"""
from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..gpu.nvml import Gpu, read_gpus
from ..sizes import format_bytes
from ._app import app


@app.command()
def gpus(as_json: bool = typer.Option(False, "--json", help="Print the device view as JSON.")) -> int:
    """Show each NVIDIA GPU's memory, utilization and processes (exit 1 without a driver)."""
    source, found = read_gpus()
    if as_json:
        print(json.dumps({"schema": "oomdoctor.gpus/1", "source": source, "gpus": [g.to_dict() for g in found]},
                         indent=2))
        return 0
    out = Console(highlight=False)
    for gpu in found:
        out.print(_header(gpu))
        if gpu.processes:
            table = Table(box=None, padding=(0, 2, 0, 2))
            table.add_column("PID", justify="right")
            table.add_column("memory", justify="right")
            table.add_column("process", overflow="ellipsis", no_wrap=True, max_width=70)
            for p in gpu.processes:
                table.add_row(str(p.pid), format_bytes(p.memory_bytes), p.name or "?")
            out.print(table)
        elif source == "nvml":
            out.print("  no processes")
    return 0


def _header(gpu: Gpu) -> Text:
    share = gpu.memory_used_bytes / gpu.memory_total_bytes if gpu.memory_total_bytes else 0.0
    text = Text(f"GPU {gpu.index}  {gpu.name}", style="bold")
    text.append(f"   {format_bytes(gpu.memory_used_bytes)} / {format_bytes(gpu.memory_total_bytes)} used ")
    text.append(f"({share:.0%})", style="red" if share > 0.9 else "")
    if gpu.utilization_percent is not None:
        text.append(f"   {gpu.utilization_percent}% busy")
    if gpu.temperature_c is not None:
        text.append(f"   {gpu.temperature_c} °C")
    return text
