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
import traceback
from typing import Any

import torch

from .core.build import build_report
from .core.clock import OpenStep, StepClock
from .core.hooks import HookSet, StepLimitReached
from .core.memory import MemoryMeter
from .core.sampling import SAMPLE_EVERY, Sampler
from .core.timeline import Timeline
from .probes import cuda, default_probes
from .probes.events import AllocationRecorder
from .probes.ledger import Ledger
from .report.model import Report, Step

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
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        self.on_cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.capacity = capacity
        self.simulated = capacity is not None
        # On CPU the simulated capacity is enforced by the ledger, which must then see every op;
        # so does a memory_viz trace.
        on_cpu = self.device.type != "cuda"
        watch_every_op = on_cpu and (capacity is not None or memory_viz is not None)
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
        self._sampler = Sampler(always=self.exact, every=sample_every)
        self.meter = MemoryMeter(self.ledger, self.device, self.on_cuda, self._choose_exact,
                                 self._outside_steps, self._record_step)
        self.clock = StepClock(self.meter)
        self.started_at = 0.0
        self.pid = os.getpid()
        self._report: Report | None = None
        self._running = False
        self._stopping = False
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
                self._install_cuda()
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
        self._stopping = True
        if exc is not None:
            self.record_exception(exc)
        try:
            self.clock.finish()
        except Exception as err:
            self.warn(f"internal error while closing the last step: {err!r}")
        self._write_memory_viz()
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
    def step_index(self) -> int | None:
        return self.clock.open.index if self.clock.open is not None else None

    @property
    def callbacks(self) -> int:
        """Calls PyTorch made into oomdoctor so far: the part of its cost that can scale."""
        return self.hooks.callbacks

    # -- what PyTorch tells us (core/hooks.py calls these, on the session's thread) ------------
    def forward_start(self, module: torch.nn.Module, args: Any) -> None:
        new_bytes = self.meter.adopt(module)
        if new_bytes and self.clock.open is not None and self.timeline.steps_total == 0:
            self.clock.open.start_bytes += new_bytes  # they were there before the first step
        self._push("forward")
        self.clock.forward_start()
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
            self.timeline.batch_size = int(args[0].shape[0])  # for the batch-size remedy
        self.meter.point()
        for probe in self.probes:
            self._probe(probe.forward_start, module)

    def forward_end(self, module: torch.nn.Module, output: Any) -> None:
        self._pop("forward")
        self.meter.point()
        for probe in self.probes:
            self._probe(probe.forward_end, module, output)

    def module_end(self, module: torch.nn.Module, output: Any) -> None:
        for probe in self.probes:
            if hasattr(probe, "module_end"):
                self._probe(probe.module_end, module, output)

    def optimizer_pre(self, optimizer: torch.optim.Optimizer) -> None:
        self._push("optimizer")
        self.meter.optimizers.add(optimizer)
        self.meter.point()
        self.clock.optimizer_pre(id(optimizer))

    def optimizer_post(self, optimizer: torch.optim.Optimizer) -> None:
        self._pop("optimizer")
        self.clock.optimizer_post(id(optimizer))

    def backward_start(self, tensors: tuple) -> None:
        self._push("backward")
        self.meter.point()
        for probe in self.probes:
            if hasattr(probe, "backward_start"):
                self._probe(probe.backward_start, tensors)

    def backward_end(self) -> None:
        self._pop("backward")
        self.meter.point()
        self.clock.backward_end()

    # -- steps ---------------------------------------------------------------------------------
    def _choose_exact(self, index: int) -> bool:
        exact = self._sampler.exact(index)
        self.hooks.per_op(exact)
        return exact

    def _record_step(self, step: OpenStep) -> None:
        """A step closed: keep it, tell the probes, stop the run if asked to."""
        end = step.end_bytes if step.end_bytes is not None else self.meter.current_bytes()
        end_time = step.end_time if step.end_time is not None else time.perf_counter()
        record = Step(
            index=step.index,
            start_bytes=step.start_bytes,
            peak_bytes=max(step.peak, step.start_bytes, end),
            end_bytes=end,
            duration_s=round(end_time - step.start_time, 6),
            by_category=dict(step.peak_by_category),
            exact=step.exact and not step.estimated_peak,
        )
        t = self.timeline
        t.add(record)
        t.note_peak(record.peak_bytes, record.by_category, record.index, estimated=not record.exact)
        if record.exact and t.batch_size:
            # What the batch costs: the step's peak beyond parameters and optimizer state. Counting
            # gradients in (backward's temporaries are among them) errs on the safe side.
            live = self.ledger.by_category
            fixed = live["parameters"] + live["optimizer_state"]
            t.per_sample_bytes = max(t.per_sample_bytes, max(0, record.peak_bytes - fixed) / t.batch_size)
        for probe in self.probes:
            probe.step_end(self, record)
        if self.stop_after_steps is not None and t.steps_total >= self.stop_after_steps:
            raise StepLimitReached(f"stopped after {t.steps_total} steps")

    def _outside_steps(self, step: OpenStep) -> None:
        """A peak outside any step: before the first, between marked steps, after the last."""
        t = self.timeline
        if t.steps_total == 0:
            where = "before the first step"
        elif self._stopping:
            where = f"after the last step (step {t.steps()[-1].index}): evaluation or saving, say"
        else:
            where = f"between steps {t.steps()[-1].index} and {t.steps()[-1].index + 1}"
        t.note_peak(step.peak, step.peak_by_category, None, where, step.estimated_peak or not step.exact)

    # -- phases --------------------------------------------------------------------------------
    def _push(self, phase: str) -> None:
        if len(self._phases) < _MAX_PHASES:
            self._phases.append(phase)

    def _pop(self, phase: str) -> None:
        if self._phases and self._phases[-1] == phase:
            self._phases.pop()

    def _category_now(self) -> str:
        return _PHASE_CATEGORY.get(self._phases[-1], "other") if self._phases else "other"

    # -- CUDA and snapshots --------------------------------------------------------------------
    def _install_cuda(self) -> None:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.device = self.meter.device = torch.device("cuda", index)
        total = torch.cuda.get_device_properties(index).total_memory
        self.timeline.capacity = self.capacity or total
        if self.capacity is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.capacity / total), index)
            self.hooks.on_remove(lambda: torch.cuda.set_per_process_memory_fraction(1.0, index))
        torch.cuda.reset_peak_memory_stats(index)
        if self.history:
            try:
                cuda.start_history()
                self.hooks.on_remove(cuda.stop_history)
            except Exception as exc:  # private API: absent or changed in some versions
                self.warn(f"allocation history not recorded ({exc!r})")
                self.history = False

    def _write_memory_viz(self) -> None:
        if not self.memory_viz:
            return
        try:
            if self.on_cuda:
                cuda.dump_snapshot(self.memory_viz)
            elif self.recorder is not None:
                from .gpu.memviz import write_snapshot

                write_snapshot(self.recorder, self.memory_viz)
            self.notes.append(f"memory snapshot: {self.memory_viz} (open it at https://pytorch.org/memory_viz)")
        except Exception as exc:
            self.warn(f"memory snapshot not written to {self.memory_viz} ({exc!r})")

    # -- exceptions and OOM --------------------------------------------------------------------
    def record_exception(self, exc: BaseException) -> None:
        """Remember how the run ended, while the failed frames (and their tensors) are alive."""
        if self.timeline.exception is not None or isinstance(exc, StepLimitReached):
            return
        frames = [
            {"file": f.filename, "line": f.lineno, "function": f.name, "code": f.line}
            for f in traceback.extract_tb(exc.__traceback__)
        ]
        message = _message(exc)
        self.timeline.exception = {
            "type": type(exc).__name__,
            "message": message.splitlines()[0] if message else "",
            "frames": frames,
            "phase": _phase_of(frames) or (self._phases[-1] if self._phases else "other"),
            "step": self.step_index,
            "live_bytes": self.meter.current_bytes(),
            "by_category": self.meter.live_by_category(),
            "largest": [
                {"bytes": e.nbytes, "category": e.category, "step": e.step,
                 "site": None if e.site is None else vars(e.site)}
                for e in self.ledger.largest(5)
            ],
            "allocator": cuda.allocator_stats(self.device) if self.on_cuda else None,
        }
        if self.on_cuda and self.history and self._running and _is_oom(exc):
            try:
                cuda.dump_snapshot(self.snapshot_path)
            except Exception as err:
                self.warn(f"memory snapshot not written ({err!r})")
                return
            self.timeline.exception["snapshot"] = self.snapshot_path
            self.notes.append(f"memory snapshot at the OOM: {self.snapshot_path} "
                              "(open it at https://pytorch.org/memory_viz)")

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


_TORCH = os.path.dirname(torch.__file__)


def _is_oom(exc: BaseException) -> bool:
    from .oom import is_oom

    return is_oom(exc)


def _message(exc: BaseException) -> str:
    """str(exc), also for an exception whose __str__ raises."""
    try:
        return str(exc).strip()
    except Exception:
        return f"<{type(exc).__name__}: str() failed>"


def _phase_of(frames: list[dict[str, Any]]) -> str | None:
    """Where a failure happened, from its traceback (the phase stack is unwound by then)."""
    for frame in reversed(frames):
        name = frame["file"]
        if not name.startswith(_TORCH):
            continue
        if "/optim/" in name:
            return "optimizer"
        if "/autograd/" in name and "backward" in frame["function"]:
            return "backward"
        if "/nn/modules/" in name:
            return "forward"
    return None


def _default_device() -> torch.device:
    """`OOMDOCTOR_DEVICE` (e.g. `cpu` for a CPU-only script on a GPU machine), else the GPU if
    there is one."""
    if os.environ.get("OOMDOCTOR_DEVICE"):
        return torch.device(os.environ["OOMDOCTOR_DEVICE"])
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
