"""Batch-size trials of a script: each one a fresh `python -m oomdoctor run` process.

Contract: `ScriptTrials(script, args, flag, steps, capacity)` is the `trial` function of
`search.search`: calling it with a batch size runs

    python -m oomdoctor.batch.trial MOMENTS run --quiet --json TMP --steps K [--capacity C] SCRIPT ARGS

(FLAG set to b; trial.py is `oomdoctor run` that also records the run's moments for the fit) and
reads the report. A fresh process per trial isolates trials completely (no cached blocks, no
leftover tensors, no state from the previous size). A run fits when it exits 0 without an
exception; it does not fit when its exception is an out-of-memory error. Anything else (a bug in
the script, a flag it does not take, no optimizer step at all) is not an answer: it stops the
search with the script's own stderr shown and an `OomdoctorError`.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from ..errors import BadInput, OomdoctorError
from ..oom import oom_family
from .search import Trial


class ScriptTrials:
    """`gpu_budget`: predict for a GPU from CPU runs: each trial runs on the CPU under that
    capacity, its peak is the CUDA reserved peak the allocator model predicts, and it fits when
    that is within the budget."""

    def __init__(self, script: str, args: list[str], flag: str, steps: int, capacity: int | None,
                 gpu_budget: int | None = None):
        self.script, self.args, self.flag = script, list(args), flag
        self.steps, self.capacity, self.gpu_budget = steps, capacity, gpu_budget
        self.reports: dict[int, dict[str, Any]] = {}  # batch size -> its report, as JSON data
        self.moments: dict[int, tuple[int, ...]] = {}  # batch size -> its moments, when recorded

    def __call__(self, batch_size: int) -> Trial:
        report, code, stderr, seconds = self.run(batch_size, self.capacity)
        self.reports[batch_size] = report
        exception = (report.get("exit") or {}).get("exception")
        capacity = (report.get("device") or {}).get("capacity_bytes")
        if exception and (exception.startswith("OutOfMemoryError") or oom_family(exception)):
            trial = Trial(batch_size, False, _peak(report), seconds, capacity_bytes=capacity)
        elif code == 0 and not exception and self.gpu_budget is not None:
            self._check_steps(report, stderr, batch_size)
            reserved = (report.get("aggregates") or {}).get("predicted_cuda_reserved_peak_bytes")
            peak = reserved or _peak(report)
            trial = Trial(batch_size, peak <= self.gpu_budget, peak, seconds, step_seconds=step_seconds(report))
        elif code == 0 and not exception:
            self._check_steps(report, stderr, batch_size)
            trial = Trial(batch_size, True, _peak(report), seconds, capacity_bytes=capacity,
                          moments=self.moments.get(batch_size, ()), step_seconds=step_seconds(report))
        else:
            if code == 2 and not exception and self.flag in stderr:  # the script's argparse said no
                raise BadInput(f"{self.script} does not take {self.flag} {batch_size}: {_last_line(stderr)}")
            _show(stderr)
            what = exception or f"exit code {code}"
            raise OomdoctorError(f"{self.script} failed at batch size {batch_size} with {what[:200]}; that is not "
                                 f"an out-of-memory error, so the search stopped (its output is above)")
        return trial

    def _check_steps(self, report: dict[str, Any], stderr: str, batch_size: int) -> None:
        if not report.get("steps_total"):
            _show(stderr)
            raise OomdoctorError(
                f"{self.script} ended without an optimizer step at batch size {batch_size}: oomdoctor batch "
                f"measures training steps (optimizer.step()); does the script train with these arguments?")

    def run(self, batch_size: int, capacity: int | None) -> tuple[dict[str, Any], int, str, float]:
        """One run of the script at `batch_size`: (report, exit code, stderr, seconds)."""
        with tempfile.TemporaryDirectory(prefix="oomdoctor-batch-") as folder:
            path, moments = os.path.join(folder, "report.json"), os.path.join(folder, "moments.json")
            command = [sys.executable, "-m", "oomdoctor.batch.trial", moments, "run", "--quiet", "--json", path,
                       "--steps", str(self.steps)]
            if capacity is not None:
                command += ["--capacity", str(capacity)]
            command += [self.script, *with_flag(self.args, self.flag, batch_size)]
            # Predicting for a GPU: the allocator model runs over CPU allocations, so the script
            # must not find this machine's GPU.
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""} if self.gpu_budget is not None else None
            started = time.perf_counter()
            done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                                  env=env)
            seconds = round(time.perf_counter() - started, 3)
            try:
                with open(path, encoding="utf-8") as f:
                    report = json.load(f)
            except (OSError, ValueError):
                _show(done.stderr)
                raise OomdoctorError(f"{self.script} at batch size {batch_size} left no report (exit code "
                                     f"{done.returncode}); its output is above") from None
            self.moments[batch_size] = _moments(moments)
        return report, done.returncode, done.stderr, seconds


def with_flag(args: list[str], flag: str, value: int) -> list[str]:
    """`args` with `flag` set to `value`: replaced where it is (`--flag V` or `--flag=V`), else
    appended."""
    out: list[str] = []
    replaced = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == flag or arg.startswith(flag + "="):
            if not replaced:
                out += [flag, str(value)]
                replaced = True
            i += 1 if "=" in arg else 2
            continue
        out.append(arg)
        i += 1
    return out if replaced else out + [flag, str(value)]


def flag_refused(script: str, flag: str) -> str | None:
    """Why the script cannot take `flag`, read from its source before any trial runs: it builds
    its options with argparse's `add_argument`, all of them literal, and none is `flag` or a
    longer option `flag` abbreviates. None when the source does not tell (another parser, options
    built elsewhere)."""
    options: set[str] = set()
    for call in _calls(script):
        if _name(call.func) == "ArgumentParser":
            if any(k.arg == "parents" for k in call.keywords):
                return None  # options inherited from parsers built elsewhere
            continue
        for arg in call.args:
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                return None
            options.add(arg.value)
    dashed = sorted(o for o in options if o.startswith("-"))
    if not dashed or any(o == flag or o.startswith(flag) for o in dashed):
        return None
    return f"{script} does not take {flag}: its options are {', '.join(dashed)}"


def _calls(script: str) -> list[ast.Call]:
    try:
        with open(script, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return []
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
            and _name(node.func) in ("add_argument", "ArgumentParser")]


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id  # type: ignore[union-attr]


def current_batch_size(script: str, args: list[str], flag: str) -> int | None:
    """The batch size the script would use: `flag` in `args`, else the literal `default=` of an
    `add_argument(flag, ...)` call in the script's source, else None."""
    for i, arg in enumerate(args):
        if arg == flag or arg.startswith(flag + "="):
            text = arg[len(flag) + 1:] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            return int(text) if text.isdigit() else None
    try:
        with open(script, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                and any(isinstance(a, ast.Constant) and a.value == flag for a in node.args)):
            for keyword in node.keywords:
                if keyword.arg == "default" and isinstance(keyword.value, ast.Constant):
                    value = keyword.value.value
                    return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


def _show(stderr: str) -> None:
    if stderr:
        sys.stderr.write(stderr if stderr.endswith("\n") else stderr + "\n")
        sys.stderr.flush()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _moments(path: str) -> tuple[int, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError):
        return ()
    return tuple(v for v in values if isinstance(v, int)) if isinstance(values, list) else ()


def step_seconds(report: dict) -> float | None:
    """The last step's duration: warm (the first one pays for lazy initialization)."""
    steps = report.get("steps") or []
    return steps[-1].get("duration_s") if len(steps) >= 2 else None


def _peak(report: dict) -> int | None:
    """The peak a capacity limits: on CUDA the allocator's reserved peak (the per-process cap
    counts reserved memory), elsewhere the live-tensor peak."""
    return (report.get("aggregates") or {}).get("reserved_peak_bytes") or report.get("peak_bytes")
