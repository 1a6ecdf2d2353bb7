"""`oomdoctor explain`: what an OOM message (or the last one in a log) means, and what to run next.

Output goes to stdout: a rich summary, or with `--json` the parsed fields
(`{"schema": "oomdoctor.explain/1", "found", "message", "memory", "cause", "lines", "next"}`).
Text with no known message, an empty or unreadable file: one error line, exit code 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ..errors import BadInput
from ..gpu.explain import Explanation, OomMessage, explain as explain_message, find_messages
from ._app import app


_CAUSES = {
    "size": "the work does not fit", "too-large": "one request larger than the device",
    "memory-limit": "a per-process memory cap", "fragmentation": "PyTorch's cache is in pieces",
    "other-process": "another process holds the memory", "device-full": "the GPU was full",
    "maybe-memory": "memory, or a library problem", "not-memory": "a bug, not a lack of memory",
}


@app.command()
def explain(
    message: Optional[str] = typer.Argument(None, help="The error message, quoted; '-' reads it from stdin."),
    file: Optional[str] = typer.Option(None, "--file", "-f", metavar="LOG", help="A log to search for messages."),
    as_json: bool = typer.Option(False, "--json", help="Print the parsed fields as JSON."),
) -> int:
    """Explain an out-of-memory (or CUDA) error message: the numbers, the likely cause, what to run next."""
    if (message is None) == (file is None):
        raise BadInput("give either a MESSAGE or --file LOG")
    text = _read(file) if file else (sys.stdin.read() if message == "-" else message)
    if not text.strip():
        raise BadInput(f"{file} is empty" if file else "the message is empty")
    messages = find_messages(text)
    if not messages:
        raise BadInput(f"no out-of-memory or CUDA error message found in {file}" if file else
                       f"not an out-of-memory or CUDA error message oomdoctor knows: {_clip(text)}")
    last = messages[-1]
    explanation = explain_message(last)
    if as_json:
        print(json.dumps({"schema": "oomdoctor.explain/1", "found": len(messages), "message": last.to_dict(),
                          "memory": explanation.memory, "cause": explanation.cause,
                          "lines": explanation.lines, "next": explanation.next}, indent=2))
    else:
        _render(explanation, last, len(messages), file)
    return 0


def _clip(text: str) -> str:
    line = " ".join(text.split())
    return repr(line if len(line) <= 60 else line[:57] + "...")


def _read(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise BadInput(f"no such file: {path}")
    if not p.is_file():
        raise BadInput(f"not a file: {path}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    return data.decode("utf-8", errors="replace")


def _render(e: Explanation, m: OomMessage, found: int, file: str | None) -> None:
    out = Console(highlight=False)
    verdict = {"yes": "a memory problem", "no": "NOT a memory problem", "maybe": "possibly a memory problem"}
    out.print(Text(e.title, style="bold red" if e.memory != "no" else "bold yellow"), f"- {verdict[e.memory]}")
    if file:
        where = f"line {m.line} of {file}"
        out.print(f"{found} message{'s' if found > 1 else ''} found; explaining the last, at {where}."
                  if found > 1 else f"Found at {where}.")
    if e.facts:
        table = Table(show_header=False, box=None, padding=(0, 2, 0, 2))
        for label, value in e.facts:
            table.add_row(label, Text(value, style="bold"))
        out.print(table)
    if e.cause:
        out.print(Text("Likely cause: ", style="bold") + Text(f"{e.cause} ({_CAUSES[e.cause]})"))
    for line in e.lines:
        out.print(Padding(line, (0, 0, 0, 2)))
    out.print(Text("Next:", style="bold"))
    for command in e.next:
        out.print(Text(f"  $ {command}", style="cyan"))
