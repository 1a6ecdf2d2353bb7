"""`oomdoctor batch`: the largest batch size that fits, for a script that takes it as a flag.

Trials run the script's first optimizer steps in fresh processes (batch/script.py); the search
(batch/search.py) decides where. The result goes to stdout (a table and the answer), progress to
stderr (batch/progress.py), the machine form (`oomdoctor.batch/1`) to `--json`. `--gpu CARD`
predicts for a card this machine does not have (gpu/cards.py). Exit 0 with an answer, 1 when even
`--min` does not fit, 2 for bad input or a script that fails for another reason than memory.
"""
from __future__ import annotations

import json as json_module
import re
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..batch.progress import SearchProgress
from ..batch.script import ScriptTrials, current_batch_size, flag_refused
from ..batch.search import DEFAULT_HIGH, BatchResult, search
from ..diagnosis.remedies import accumulation
from ..errors import BadInput, NothingFits
from ..gpu.cards import ASSUMPTIONS, Card, card, describe
from ..report.json import check_writable
from ..runner import Target, check_target
from ..sizes import format_bytes, parse_size
from ._app import app


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def batch(
    script: Optional[str] = typer.Argument(None, metavar="SCRIPT", help="Training script taking its batch size as FLAG."),
    args: Optional[List[str]] = typer.Argument(None, metavar="[ARGS]...", help="Arguments for the script."),
    flag: str = typer.Option(..., "--flag", metavar="NAME", help="The script's batch-size flag, e.g. --batch-size."),
    capacity: Optional[str] = typer.Option(
        None, "--capacity", metavar="SIZE",
        help="Search for a device of SIZE bytes (e.g. 16GiB); needed without a GPU. Default: the GPU's memory."),
    low: int = typer.Option(1, "--min", min=1, metavar="N", help="Smallest batch size to consider."),
    high: int = typer.Option(DEFAULT_HIGH, "--max", min=1, metavar="N", help="Largest batch size to consider."),
    steps: int = typer.Option(2, "--steps", min=2, metavar="K",
                              help="Optimizer steps per trial (2 or more: optimizer state appears at the first)."),
    margin: float = typer.Option(10.0, "--margin", metavar="PCT",
                                 help="Capacity share the recommendation keeps free, in %."),
    json: Optional[str] = typer.Option(None, "--json", metavar="PATH", help="Write the result as JSON."),
    gpu: Optional[str] = typer.Option(
        None, "--gpu", metavar="CARD",
        help="Predict for a GPU you do not have (e.g. A100-40GB), from CPU trials: its memory less the CUDA "
             "context, against the caching allocator's predicted reserved bytes. Predicted, unvalidated."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines while trials run."),
) -> int:
    """Find the largest batch size that fits, and a recommended one with headroom.

    Runs the first K optimizer steps of SCRIPT at a few batch sizes (FLAG set to each), one fresh
    process per trial, fits peak memory against the batch size, predicts the largest size that
    fits and confirms it with real trials.
    """
    args = list(args or [])
    if script is None:
        raise BadInput("give the training script to search, e.g. oomdoctor batch --flag --batch-size train.py")
    if not flag.startswith("-"):
        raise BadInput(f"--flag takes the script's option as typed, with its dashes (e.g. --{flag}), got {flag!r}")
    if low > high:
        raise BadInput(f"--min {low} is larger than --max {high}")
    if not 0 <= margin < 100:
        raise BadInput(f"--margin is a percentage in [0, 100), got {margin:g}")
    target = card(gpu) if gpu is not None else None
    if target is not None and capacity is not None:
        raise BadInput("give --gpu CARD or --capacity SIZE, not both: the card sets the capacity")
    size = parse_size(capacity) if capacity is not None else None
    if target is not None:
        # The trials hold the batch's tensors in this machine's memory: search below what it has
        # free, and extrapolate to the card past that.
        size = min(target.allocator_bytes, _host_free() or target.allocator_bytes)
    elif size is None and not _has_gpu():
        raise BadInput("no GPU here: give --capacity SIZE (e.g. 16GiB) to search against a simulated device, "
                       "or --gpu CARD to predict for a card")
    if json:
        check_writable(json)
    check_target(Target(script, None, args))
    refused = flag_refused(script, flag)
    if refused:
        raise BadInput(refused)

    trials = ScriptTrials(script, args, flag, steps, size, gpu_budget=size if target is not None else None)
    with SearchProgress(quiet) as progress:
        result = search(progress.wrap(trials), low=low, high=high, capacity=size, margin=margin / 100)
    if target is not None and result.all_fit:  # whatever this machine's memory, the card holds them all
        result.capacity_bytes = target.allocator_bytes
        result.recommended_batch_size = result.recommended_for(result.margin)
    console = Console(file=sys.stdout, width=_width(), highlight=False)
    console.print(_table(result))
    if result.max_batch_size is None:
        raise NothingFits(_nothing_fits(result, trials.reports.get(low, {})))

    current = current_batch_size(script, args, flag)
    accumulation = _accumulation(current, result.recommended_batch_size)
    beyond = _beyond_host(target, result)
    for line in _summary(result, flag, current, accumulation) + _speed(result) + _card_lines(target, result, beyond):
        console.print(line)
    if json:
        gpu = None if target is None else {**describe(target), "extrapolated_max_batch_size": beyond}
        data = {**result.to_dict(), "script": script, "flag": flag, "steps": steps,
                "current_batch_size": current, "accumulation": accumulation, "gpu": gpu}
        Path(json).write_text(json_module.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


def _has_gpu() -> bool:
    import torch

    try:
        return torch.cuda.is_available()
    except Exception:
        return False


def _table(result: BatchResult) -> Table:
    table = Table(title="oomdoctor batch: trials", title_justify="left")
    for name in ("batch size", "fits", "peak", "samples/s", "seconds", "source"):
        table.add_column(name, justify="left" if name in ("fits", "source") else "right")
    for t in sorted(result.trials, key=lambda t: t.batch_size):
        if t.source == "predicted":
            peak = f">= {format_bytes(t.peak_bytes)}"  # the secant's lower bound
        else:  # an OOM run stopped before its peak: no figure to show
            peak = format_bytes(t.peak_bytes) if t.fits else "-"
        rate = t.samples_per_second
        table.add_row(str(t.batch_size), "yes" if t.fits else "OOM", peak, "-" if rate is None else f"{rate:,.0f}",
                      "-" if t.seconds is None else f"{t.seconds:.1f}", t.source)
    return table


def _summary(result: BatchResult, flag: str, current: int | None, accumulation: dict[str, int] | None) -> list[str]:
    best, recommended, cap = result.max_batch_size, result.recommended_batch_size, result.capacity_bytes
    lines = []
    if result.all_fit:
        lines.append(f"Every batch size up to --max {best} fits: {best} is the answer here, and more may fit "
                     f"(raise --max to look further).")
    else:
        lines.append(f"Largest batch size that fits: [bold]{best}[/bold] ({best} fits, {best + 1} does not, "
                     f"{result.measured_trials} trials run).")
    peak, usable = result.peak_at(recommended), result.usable_bytes
    if cap is None or peak is None or usable is None:
        lines.append(f"Recommended: [bold]{recommended}[/bold].")
    else:
        of = format_bytes(cap) if usable >= cap else (
            f"the {format_bytes(usable)} usable (it ran out there, below the {format_bytes(cap)} capacity: "
            f"allocator overhead)")
        if peak <= usable * (1 - result.margin):
            lines.append(f"Recommended: [bold]{recommended}[/bold] (peak {format_bytes(peak)}: keeps at least "
                         f"{result.margin:.0%} of {of} free, for fragmentation and longer inputs).")
        else:
            lines.append(f"Recommended: [bold]{recommended}[/bold], the smallest size: even it leaves only "
                         f"{format_bytes(usable - peak)} of {of} free, less than the {result.margin:.0%} margin.")
    c = result.deciding_curve
    if c is not None and c.per_sample >= 0:  # a staircase of reserved segments can tilt a line down
        at = result.max_batch_size or 1
        bend = f" + {format_bytes(float(c.quadratic))} x batch^2" if c.quadratic * at * at >= c.peak(at) / 100 else ""
        pieces = len(result.curve.pieces)
        moments = f"; the largest of {pieces} moments of the step, fitted each" if pieces > 1 else ""
        lines.append(f"Memory model near the maximum: {format_bytes(float(c.fixed))} + "
                     f"{format_bytes(float(c.per_sample))} x batch{bend}{moments}.")
    if accumulation is not None:
        lines.append(f"The script's batch size is {current}: run it with {flag} {accumulation['micro_batch_size']} and "
                     f"accumulate gradients over {accumulation['steps']} micro-batches to keep an effective batch of "
                     f"{accumulation['effective_batch_size']}.")
    return lines


def _speed(result: BatchResult) -> list[str]:
    """The fastest size per sample, beside the largest, when a smaller one trains faster."""
    faster = result.faster_than_largest()
    if faster is None:
        return []
    largest = result.trial(result.max_batch_size)
    return [f"Fastest per sample: [bold]{faster.batch_size}[/bold] ({faster.samples_per_second:,.0f} samples/s, "
            f"{faster.samples_per_second / largest.samples_per_second:.2f}x the {largest.samples_per_second:,.0f} "
            f"samples/s of {largest.batch_size}): prefer it where memory is not the point. Timed on the last "
            f"trial step, under oomdoctor's watch (on CPU every op pays a few microseconds, small batches most)."]


def _host_free() -> int | None:
    """80 % of this machine's available memory (Linux), the most a trial may hold; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024 * 8 // 10
    except (OSError, KeyError, ValueError):
        return None


def _beyond_host(target: Card | None, result: BatchResult) -> int | None:
    """When this machine's memory, not the card's, stopped the search: the largest size the
    fitted memory model puts within the card (an extrapolation)."""
    if target is None or result.capacity_bytes is None or result.capacity_bytes >= target.allocator_bytes:
        return None
    if result.max_batch_size is None or result.all_fit or result.curve is None:
        return None
    return result.curve.largest_fitting(target.allocator_bytes, result.max_batch_size, result.high)


def _card_lines(target: Card | None, result: BatchResult, beyond: int | None) -> list[str]:
    if target is None:
        return []
    lines = []
    if result.capacity_bytes is not None and result.capacity_bytes < target.allocator_bytes:
        lines.append(f"This machine has {format_bytes(result.capacity_bytes)} to spare for trials, less than the card: "
                     f"sizes were measured up to there" + (
                         f"; the fitted memory model puts [bold]{beyond}[/bold] within the card (extrapolated)."
                         if beyond is not None else "."))
    return lines + [f"[bold]Predicted for {target.name}, unvalidated[/bold]: {format_bytes(target.memory_bytes)} on the card, "
            f"less ~{format_bytes(target.context_bytes)} of CUDA context and library kernels the allocator never "
            f"sees: {format_bytes(target.allocator_bytes)} for PyTorch's caching allocator. Peaks above are the "
            f"bytes it would reserve (the allocator model over this CPU run: 512-byte rounding, 2 MiB / 20 MiB "
            f"segments). Assumes " + "; ".join(ASSUMPTIONS) + "."]


def _accumulation(current: int | None, recommended: int | None) -> dict[str, int] | None:
    """Micro-batch and steps keeping the effective batch `current`, when `recommended` is smaller
    (the same rule as the OOM post-mortem's remedy)."""
    if current is None or recommended is None or recommended >= current:
        return None
    micro, steps = accumulation(current, recommended)
    return {"micro_batch_size": micro, "steps": steps, "effective_batch_size": micro * steps}


def _nothing_fits(result: BatchResult, report: dict[str, Any]) -> str:
    low, cap = result.low, result.capacity_bytes
    message = f"even batch size {low} does not fit" + (f" in {format_bytes(cap)}" if cap else "")
    categories = report.get("peak_by_category") or {}
    fixed = sum(categories.get(k, 0) for k in ("parameters", "gradients", "optimizer_state"))
    if fixed:
        message += (f": parameters, gradients and optimizer state alone take {format_bytes(fixed)} "
                    f"({fixed / cap:.0%} of it)" if cap else f": the fixed part takes {format_bytes(fixed)}")
    elif report.get("peak_bytes"):
        parts = ", ".join(f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in categories.items() if v)
        message += f": {format_bytes(report['peak_bytes'])} was live ({parts})"
    tried = re.search(r"Tried to allocate ([0-9.]+ \w+)", (report.get("exit") or {}).get("exception") or "")
    if tried:
        message += f"; it failed asking for {tried.group(1)} more"
    return message + "; a smaller model, mixed precision or a larger device is needed"


def _width() -> int:
    import os

    try:
        return int(os.environ.get("COLUMNS", "")) or 100
    except ValueError:
        return 100
