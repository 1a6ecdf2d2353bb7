"""`oomdoctor run`: run a script (or `-m module`) under the profiler and report at the end."""
from __future__ import annotations

import subprocess
import sys
from typing import List, Optional

import typer
from typer.core import TyperCommand

from ..distributed import current_rank, finish_rank, start_rank
from ..errors import BadInput
from ..report.output import check_output, output_path, save, show, tell
from ..report.model import FINDING_KINDS
from ..runner import Target, check_target, run_target
from ..sizes import parse_size
from ._app import app


class _RunCommand(TyperCommand):
    """Everything after `-m MODULE` is the module's, as everything after SCRIPT is the script's
    (python's own rule): the parser is told so by a `--` after the module's name."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        takes_value = {name for p in self.params if getattr(p, "is_flag", True) is False
                       for name in (*p.opts, *p.secondary_opts)}
        i = 0
        while i < len(args) and args[i] != "--" and args[i].startswith("-"):
            arg = args[i]
            if arg == "-m" and i + 1 < len(args):
                return super().parse_args(ctx, [*args[:i + 2], "--", *args[i + 2:]])
            if arg.startswith("-m") and len(arg) > 2:  # `-mmod`, as python takes it
                return super().parse_args(ctx, [*args[:i], "-m", arg[2:], "--", *args[i + 1:]])
            i += 2 if arg in takes_value else 1  # an option's value is not the script
        return super().parse_args(ctx, args)


@app.command(cls=_RunCommand,
             context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def run(
    script: Optional[str] = typer.Argument(None, metavar="SCRIPT", help="Python script to run (or use -m MODULE)."),
    args: Optional[List[str]] = typer.Argument(None, metavar="[ARGS]...", help="Arguments for the script."),
    module: Optional[str] = typer.Option(
        None, "-m", metavar="MODULE", help="Run a module as `python -m MODULE` does; what follows is its arguments."),
    json: Optional[str] = typer.Option(None, "--json", metavar="PATH", help="Write the report as JSON."),
    html: Optional[str] = typer.Option(None, "--html", metavar="PATH", help="Write a self-contained HTML report."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No report on the terminal."),
    capacity: Optional[str] = typer.Option(
        None, "--capacity", metavar="SIZE",
        help="Behave as if the device had SIZE bytes (e.g. 2GiB): OOMs happen past it, also on CPU."),
    exact: bool = typer.Option(False, "--exact", help="Watch every op of every step (slower on CPU)."),
    device: Optional[str] = typer.Option(
        None, "--device", metavar="DEVICE",
        help="The device to watch: cpu, cuda, cuda:1. Default: $OOMDOCTOR_DEVICE, else the GPU if there is one."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, metavar="N", help="Stop the script after this many steps."),
    history: bool = typer.Option(
        True, "--history/--no-history",
        help="CUDA: record allocations with Python stacks and write a memory_viz snapshot on OOM."),
    memory_viz: Optional[str] = typer.Option(
        None, "--memory-viz", metavar="PATH",
        help="Write a memory snapshot for pytorch.org/memory_viz at the end (CPU: watches every op)."),
    fail_on: Optional[str] = typer.Option(
        None, "--fail-on", metavar="KIND[,KIND]",
        help="Exit 1 when findings of these kinds exist (e.g. retained-graph,memory-growth): guard a loop in CI."),
    gpu: Optional[str] = typer.Option(
        None, "--gpu", metavar="CARD",
        help="Predict from this CPU run whether it fits a GPU you do not have (e.g. A100-40GB; watches every op)."),
    nproc_per_node: Optional[int] = typer.Option(
        None, "--nproc-per-node", min=1, metavar="N", help="Launch N processes through torch.distributed.run (torchrun)."),
) -> int:
    """Run SCRIPT like `python SCRIPT ARGS...` and report its memory, step by step.

    The script's exit code, stdout, sys.argv and cwd are what python gives; the report goes to
    stderr at the end, also when the script raises, is interrupted or runs out of memory.
    """
    args = list(args or [])
    if module is not None:
        target = Target(None, module, ([script] if script is not None else []) + args)
    elif script is None:
        raise BadInput("give a script to run, or -m MODULE")
    elif script.startswith("-"):
        raise BadInput(f"no such option: {script}")
    else:
        target = Target(script, None, args)
    size = parse_size(capacity) if capacity is not None else None
    watched = _device(device)
    # Before the run: an hour of training must not lose its report, nor leave it where the
    # script's os.chdir went.
    json, html, memory_viz = output_path(json), output_path(html), output_path(memory_viz)
    for path in (json, html, memory_viz):
        if path:
            check_output(path)
    check_target(target)
    kinds = _kinds(fail_on)
    card = _card(gpu, capacity, watched)
    if nproc_per_node:
        options = _forwarded(json=json, html=html, quiet=quiet, capacity=capacity, exact=exact, device=device, steps=steps,
                             history=history, fail_on=fail_on)
        if memory_viz:
            raise BadInput("--memory-viz is not supported with --nproc-per-node yet; run one rank under torchrun")
        return launch(nproc_per_node, options, target)

    from ..session import Session  # imports torch: only now that a script will run

    session = Session(capacity=size, exact=exact, stop_after_steps=steps, command=target.describe(), json=json,
                      html=html, quiet=quiet, history=history, memory_viz=memory_viz, device=watched, gpu=card)

    failed: list[str] = []
    unwritten: list[str] = []

    def finish(error: BaseException | None, code: int) -> None:
        report = session.stop(error, exit_code=code)
        rank = current_rank()
        if rank is not None:  # under torchrun: rank 0 reports for all ranks
            report = finish_rank(report, json, rank)
            if report is None:
                return
        unwritten.extend(save(report, json_path=json, html_path=html))
        if not quiet:
            show(report)
        failed.extend(sorted({f.kind for f in report.findings if f.kind in kinds}))

    start_rank(current_rank())  # under torchrun: a sign of life for rank 0, which merges the reports
    code = run_target(target, session, finish)
    if failed and code == 0:
        print(f"oomdoctor: failing the run: found {', '.join(failed)} (--fail-on)", file=sys.stderr)
        code = 1
    tell(unwritten)  # last: the one thing the user must not miss
    return 1 if unwritten and code == 0 else code


def _device(name: str | None):
    if name is None:
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise BadInput(f"--device: not a device: {name!r} (cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput(f"--device {name}: no CUDA device here")
    return device


def _card(name: str | None, capacity: str | None, device):
    """`--gpu CARD`: a card from gpu/cards.py's table, for a run on the CPU."""
    if name is None:
        return None
    from ..gpu.cards import card

    if capacity is not None:
        raise BadInput("--gpu and --capacity: give one (--gpu predicts for a card, --capacity simulates a size)")
    if device is not None and device.type == "cuda":
        raise BadInput("--gpu predicts from a CPU run for a card you do not have; on a GPU use --capacity")
    return card(name)


def _kinds(fail_on: str | None) -> set[str]:
    if not fail_on:
        return set()
    kinds = {k.strip() for k in fail_on.split(",") if k.strip()}
    unknown = kinds - FINDING_KINDS
    if unknown:
        raise BadInput(f"--fail-on: unknown finding kind {', '.join(sorted(unknown))}; "
                       f"known: {', '.join(sorted(FINDING_KINDS))}")
    return kinds


def _forwarded(**options) -> list[str]:
    """The options of this run, for each rank's `oomdoctor run`."""
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "history":
            args += [] if value else ["--no-history"]
        elif value is True:
            args.append(flag)
        elif value not in (None, False):
            args += [flag, str(value)]
    return args


def launch(nproc: int, options: list[str], target: Target) -> int:
    """Run each rank under `oomdoctor run` through torch.distributed.run; its exit code."""
    head = ["-m", target.module] if target.module is not None else [target.path]
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               "-m", "oomdoctor", "run", *options, *head, *target.args]
    return subprocess.call(command)
