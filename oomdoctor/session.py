"""The one core: a `Session` watches PyTorch memory step by step and produces a `Report`.

The CLI (`oomdoctor run`), the decorator (`watch`), the context manager (`track`) and the
integrations all drive this class; a session started while another one runs joins it instead
(`Session.current()`), so a decorated step inside `oomdoctor run` is one step of the run's report.

The story of a run: `start()` installs the hooks (core/hooks.py); PyTorch tells the session about
forwards, backward passes and optimizer steps; the step clock (core/clock.py) turns those events
into steps, asking the memory meter (core/memory.py) for bytes at each boundary; each closed step
goes to the timeline and to the probes (probes/), which record events; `stop()` removes every hook
and the report builder (core/build.py) runs the pure detectors over the timeline.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

import torch

from .core import failure
from .core.build import build_report, write_memory_viz
from .core.clock import StepClock
from .core.hooks import HookSet, StepLimitReached
from .core.memory import MemoryMeter
from .core.sampling import SAMPLE_EVERY, Sampler
from .core.steps import StepLog
from .core.timeline import Timeline
from .probes import cuda, default_probes
from .probes.events import AllocationRecorder
from .probes.ledger import Ledger
from .report.model import Report

__all__ = ["Session", "StepLimitReached"]

_PHASE_CATEGORY = {"forward": "activations", "backward": "gradients", "optimizer": "optimizer_state"}
_MAX_PHASES = 64  # nesting deeper than this is a bug of ours, never a reason to grow


class Session:
    _active: "Session | None" = None

    def __init__(
        self,
        *,
        device: str | torch.device | None = None,
        capacity: int | None = None,
        exact: bool = False,
        sample_every: int = SAMPLE_EVERY,
        quiet: bool = False,
        json: str | None = None,
        html: str | None = None,
        stop_after_steps: int | None = None,
        command: list[str] | None = None,
        history: bool = True,
        snapshot: str | None = None,
        memory_viz: str | None = None,
        gpu: Any = None,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        self.on_cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.capacity = capacity
        self.simulated = capacity is not None
        # On CPU the simulated capacity is enforced by the ledger, which must then see every op.
        on_cpu = self.device.type != "cuda"
        # A simulated capacity, a trace and a GPU prediction (`gpu`, a gpu.cards.Card) need every op.
        self.gpu = gpu if on_cpu else None
        watch_every_op = on_cpu and (capacity is not None or memory_viz is not None or self.gpu is not None)
        self.exact = exact or watch_every_op
        self.memory_viz = memory_viz
        self.quiet = quiet
        self.json_path = json
        self.html_path = html
        self.stop_after_steps = stop_after_steps
        self.command = command
        # CUDA: record allocations with Python stacks (bounded) and dump a snapshot that
        # pytorch.org/memory_viz opens when the run dies of OOM, to `snapshot` or next to --json.
        self.history = history
        self.snapshot_path = snapshot or cuda.snapshot_next_to(json)
        self.timeline = Timeline(device_type=self.device.type, capacity=capacity)
        self.ledger = Ledger(self.device.type, capacity if on_cpu else None)
        self.ledger.on_oom = self._on_simulated_oom
        # With every op watched on CPU anyway, note where each storage was created (an OOM
        # post-mortem names the lines behind the largest tensors) and replay the allocations
        # through the CUDA allocator model (what a GPU would reserve for the same program).
        self.ledger.record_sites = watch_every_op
        self.recorder = AllocationRecorder(keep_trace=memory_viz is not None) if watch_every_op else None
        self.ledger.listener = self.recorder
        self.notes: list[str] = []
        self.probes: list[Any] = default_probes()
        self.hooks = HookSet(self, self.ledger, self._category_now)
        self.sampler = Sampler(always=self.exact, every=sample_every)
        self.step_log = StepLog(self)
        self.meter = MemoryMeter(self.ledger, self.device, self.on_cuda, self._choose_exact,
                                 self.step_log.outside, self.step_log.record)
        self.clock = StepClock(self.meter)
        self.started_at = 0.0
        self.pid = os.getpid()
        self._report: Report | None = None
        self._running = False
        self.stopping = False
        self._trained = False  # a root forward ran
        self._optimized: set[int] = set()  # ids of the parameters of the optimizers made so far
        self._phases: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def current(cls) -> "Session | None":
        return cls._active

    def start(self) -> "Session":
        if self._running:
            return self
        if Session._active is not None:
            raise RuntimeError("another oomdoctor session is running; use Session.current() to join it")
        Session._active = self
        self._running = True
        self.started_at = time.perf_counter()
        try:
            self.hooks.install()
            if self.on_cuda:
                cuda.install(self)
            for probe in self.probes:
                probe.start(self)
                self.hooks.on_remove(probe.stop)
        except Exception as exc:  # never break the user's program for our own failure
            self.warn(f"could not install all probes ({exc!r}); the report may be incomplete")
        self._guard(self.clock.start)
        return self

    def stop(self, exc: BaseException | None = None, exit_code: int | None = None) -> Report:
        """End the session and build its report (once; later calls return the same report)."""
        if self._report is not None:
            return self._report
        self.stop_after_steps = None  # the last step must not stop the stop
        self.stopping = True
        if exc is not None:
            self.record_exception(exc)
        try:
            self.clock.finish(failed=self.timeline.exception is not None)
        except Exception as err:
            self.warn(f"internal error while closing the last step: {err!r}")
        write_memory_viz(self)
        self.hooks.remove()
        self._running = False
        if Session._active is self:
            Session._active = None
        self._report = build_report(self, exit_code)
        return self._report

    def report(self) -> Report:
        """The report: final once the session stopped, a snapshot while it runs."""
        return self._report if self._report is not None else build_report(self, None)

    def breakdown(self) -> dict[str, int]:
        """Live bytes now, by category."""
        self._guard(self.meter.walk)
        return self.meter.live_by_category()

    def __enter__(self) -> "Session":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        from .report.output import emit  # late: output imports renderers that import this module

        report = self.stop(exc if exc is not None and not isinstance(exc, StepLimitReached) else None)
        if os.getpid() != self.pid:
            return  # a forked child: the process that started the session reports
        emit(report, quiet=self.quiet, json_path=self.json_path, html_path=self.html_path)

    # -- explicit steps ------------------------------------------------------------------------
    def begin_step(self) -> None:
        """Start a step now (decorator, integrations). Explicit marks take precedence over the
        boundaries oomdoctor finds by itself; whatever ran before the first one is no step."""
        self._guard(self.clock.begin)

    def end_step(self) -> None:
        """End the step started by `begin_step`."""
        self._guard(self.clock.end)

    def step(self) -> None:
        """Mark the end of a step (call it where an iteration ends); the next one starts here.

        The first call ends the step that began with the session.
        """
        self._guard(self.clock.mark)

    @property
    def sampling(self) -> bool:
        """True while the per-op view watches this step (probes may look deeper then)."""
        return self.hooks.sampling

    @property
    def phases(self) -> list[str]:
        """What runs now, innermost last: "forward", "backward", "optimizer"."""
        return self._phases

    @property
    def step_index(self) -> int | None:
        return self.clock.open.index if self.clock.open is not None else None

    @property
    def callbacks(self) -> int:
        """Calls PyTorch made into oomdoctor so far: the part of its cost that can scale."""
        return self.hooks.callbacks

    # -- what PyTorch tells us (core/hooks.py calls these, on the session's thread) ------------
    def forward_start(self, module: torch.nn.Module, args: Any) -> None:
        self.meter.adopt(module)
        if not self._trained:
            # Training starts with the first forward: step 0 starts here, with the model (and
            # what else was built before) already in memory.
            self._trained = True
            self.clock.training_starts()
        recompute = self._recomputing()
        self._push("forward")
        self.meter.point()
        if recompute:
            return
        self.step_log.forwards += 1
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
            self.timeline.batch_size = int(args[0].shape[0])  # for the batch-size remedy
        for probe in self.probes:
            self._probe(probe.forward_start, module)

    def forward_end(self, module: torch.nn.Module, output: Any) -> None:
        self._pop("forward")
        if self._recomputing():
            self.meter.point()
            return
        self.meter.point(forward=torch.is_grad_enabled())  # only a graph keeps its activations
        for probe in self.probes:
            self._probe(probe.forward_end, module, output)

    def _recomputing(self) -> bool:
        """A forward inside a backward pass: activation checkpointing recomputes what it dropped.
        Its graph is autograd's business (used, or dropped once its tensors are taken): the
        probes must not judge it as a forward nobody back-propagated."""
        return "backward" in self._phases

    def module_end(self, module: torch.nn.Module, output: Any) -> None:
        if self._recomputing():
            return
        for probe in self.probes:
            if hasattr(probe, "module_end"):
                self._probe(probe.module_end, module, output)

    def optimizer_made(self, optimizer: torch.optim.Optimizer) -> None:
        self.meter.adopt_optimizer(optimizer)
        self.clock.optimizer_exists()
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not params <= self._optimized:  # a new phase of training: watch its first steps
            self._optimized |= params
            # +1: the next step's per-op view was chosen at the last optimizer step already.
            self.sampler.new_phase(self.clock.next_index + 1)

    def optimizer_pre(self, optimizer: torch.optim.Optimizer) -> None:
        self._push("optimizer")
        self.meter.optimizers.add(optimizer)
        self.meter.point()
        self.clock.optimizer_pre(id(optimizer))

    def optimizer_post(self, optimizer: torch.optim.Optimizer) -> None:
        self._pop("optimizer")
        self.step_log.forwards = 0
        self.meter.optimizer_ran()
        self.clock.optimizer_post(id(optimizer))

    def backward_start(self, tensors: tuple) -> None:
        self._push("backward")
        self.meter.point()
        for probe in self.probes:
            if hasattr(probe, "backward_start"):
                self._probe(probe.backward_start, tensors)

    def backward_failed(self) -> None:
        self._pop("backward")

    def compiled(self) -> None:
        self.meter.heap.compiled()

    def backward_end(self) -> None:
        self._pop("backward")
        self.step_log.forwards = 0
        self.meter.point(backward=True)
        self.clock.backward_end()

    # -- steps ---------------------------------------------------------------------------------
    def _choose_exact(self, index: int) -> bool:
        exact = self.sampler.exact(index)
        self.hooks.per_op(exact)
        return exact

    # -- phases --------------------------------------------------------------------------------
    def _push(self, phase: str) -> None:
        if len(self._phases) < _MAX_PHASES:
            self._phases.append(phase)

    def _pop(self, phase: str) -> None:
        if self._phases and self._phases[-1] == phase:
            self._phases.pop()

    def _category_now(self) -> str:
        return _PHASE_CATEGORY.get(self._phases[-1], "other") if self._phases else "other"

    # -- snapshots and failures ----------------------------------------------------------------
    def record_exception(self, exc: BaseException) -> None:
        """Remember how the run ended, while the failed frames (and their tensors) are alive."""
        if self.timeline.exception is None and not isinstance(exc, StepLimitReached):
            failure.record(self, exc)

    def _on_simulated_oom(self, nbytes: int) -> None:
        self.timeline.add_event("simulated-oom", bytes=nbytes, live_bytes=self.ledger.total)

    # -- our own failures ----------------------------------------------------------------------
    def _guard(self, fn: Any) -> None:
        self.hooks._call(fn)

    def _probe(self, fn: Any, *args: Any) -> None:
        self.hooks._call(fn, self, *args)

    def warn(self, message: str) -> None:
        line = f"oomdoctor: warning: {message}"
        if line not in self.notes:
            self.notes.append(line)
            print(line, file=sys.stderr)

    _warn = warn  # the probes' name for it


def _default_device() -> torch.device:
    """`OOMDOCTOR_DEVICE` (e.g. `cpu` for a CPU-only script on a GPU machine), else the GPU if
    there is one."""
    if os.environ.get("OOMDOCTOR_DEVICE"):
        return torch.device(os.environ["OOMDOCTOR_DEVICE"])
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
