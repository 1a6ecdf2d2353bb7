"""The one core: a `Session` watches PyTorch memory step by step and produces a `Report`.

The CLI (`oomdoctor run`), the decorator (`watch`), the context manager (`track`) and the
integrations all drive this class; a session started while another one runs joins it instead
(`Session.current()`), so a decorated step inside `oomdoctor run` is one step of the run's report.

Step boundaries are found without changes to the user's code:
- optimizer steps (global step hooks). Several optimizers stepping in one iteration (a GAN) are
  one step: a step closes when an optimizer that already stepped in it steps again, at the end
  of that step's last optimizer step;
- `backward()` calls, while no optimizer has stepped (hand-written updates). They are held back
  until it is clear no optimizer follows, so gradient accumulation is not split into steps;
- explicit marks (`begin_step`/`end_step`, the decorator), which then take precedence.
An optimizer whose `step(closure)` runs forward and backward inside (LBFGS) is one step per call.

Bytes come from the CUDA caching allocator's statistics on CUDA (exact, free) and from the
tensor ledger (probes/ledger.py) everywhere; the ledger also tells what the bytes are.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable

import torch

from .probes import cuda, default_probes
from .probes.events import AllocationRecorder
from .probes.ledger import Ledger, LedgerMode
from torch.utils._python_dispatch import _get_current_dispatch_mode
from .report.model import CATEGORIES, Device, ExitInfo, Report, Step, empty_categories
from .core.timeline import Timeline

# Steps measured exactly with the ledger's dispatch mode on CPU: the first ones (lazily created
# optimizer state, warm-up) and then one in `sample_every`. An exact step costs ~3x on op-heavy
# CPU steps, so one in 32 adds ~6 % on average (benchmarks/overhead.py).
WARMUP_STEPS = 3
SAMPLE_EVERY = 32
# Backward-only steps held back before deciding the script updates parameters by hand: larger
# than any common gradient-accumulation factor.
PENDING_BACKWARDS = 32

_PHASE_CATEGORY = {"forward": "activations", "backward": "gradients", "optimizer": "optimizer_state"}


class StepLimitReached(BaseException):
    """Raised at a step boundary once `stop_after_steps` steps ran (`oomdoctor run --steps`).

    A BaseException so that the user's `except Exception` blocks let it through.
    """


class _OpenStep:
    __slots__ = ("index", "start_bytes", "start_time", "peak", "peak_by_category", "exact",
                 "end_bytes", "end_time", "stepped")

    def __init__(self, index: int, start_bytes: int, start_time: float, exact: bool):
        self.index = index
        self.start_bytes = start_bytes
        self.start_time = start_time
        self.peak = start_bytes
        self.peak_by_category: dict[str, int] = empty_categories()
        self.exact = exact
        self.end_bytes: int | None = None  # set at each candidate end (optimizer post, backward)
        self.end_time: float | None = None
        self.stepped: set[int] = set()  # ids of optimizers that stepped in this step


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
        self.capacity = capacity
        self.simulated = capacity is not None
        # On CPU the simulated capacity is enforced by the ledger, which must then see every op; so
        # does a memory_viz trace.
        on_cpu = self.device.type != "cuda"
        self.exact = exact or on_cpu and (capacity is not None or memory_viz is not None)
        self.memory_viz = memory_viz
        self.sample_every = max(1, sample_every)
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
        self.ledger = Ledger(self.device.type, capacity if self.device.type != "cuda" else None)
        self.ledger.on_oom = self._on_simulated_oom
        # With a simulated capacity every op is watched anyway: also note where each storage was
        # created, so an OOM post-mortem can name the lines behind the largest live tensors.
        self.ledger.record_sites = self.exact and on_cpu and (capacity is not None or memory_viz is not None)
        # A simulated device (or a trace) on CPU: replay allocations through the CUDA allocator
        # model, to say what a GPU would reserve for the same program.
        self.recorder = AllocationRecorder(keep_trace=memory_viz is not None) if self.ledger.record_sites else None
        self.ledger.listener = self.recorder
        self.notes: list[str] = []
        self.probes: list[Any] = default_probes()
        self._report: Report | None = None
        self._running = False
        self._joined = 0  # nested start() calls that joined this session
        self._handles: list[Any] = []
        self._undo: list[Callable[[], None]] = []
        self._mode: LedgerMode | None = None
        self._phases: list[str] = []
        self._depth = 0
        self._modules: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()
        self._optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
        self._open: _OpenStep | None = None
        self._pending: list[_OpenStep] = []  # backward-only steps held back
        self._explicit = False
        self._optimizer_seen = False
        self._state_sizes: dict[int, int] = {}  # optimizer id -> len(state) at the last walk
        self._hooks: Any = None  # saved-tensor hooks, on while the ledger sees every op (and on CUDA)
        self._grad_bytes = 0  # gradients not in the ledger (unsampled steps), at the last walk
        self._activations = 0  # activations at the peak of the last exact step: the estimate
        self._in_optimizer = 0
        self._next_index = 0
        self._started_at = 0.0
        self._thread = threading.get_ident()
        self._on_cuda = self.device.type == "cuda" and torch.cuda.is_available()

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
        self._started_at = time.perf_counter()
        try:
            self._install()
        except Exception as exc:  # never break the user's program for our own failure
            self._warn(f"could not install all probes ({exc!r}); the report may be incomplete")
        self._open_step(time.perf_counter())
        return self

    def stop(self, exc: BaseException | None = None, exit_code: int | None = None) -> Report:
        """End the session and build its report (once; later calls return the same report)."""
        if self._report is not None:
            return self._report
        self.stop_after_steps = None  # the last step must not stop the stop
        if exc is not None:
            self.record_exception(exc)
        try:
            self._finish_steps()
        except Exception as err:
            self._warn(f"internal error while closing the last step: {err!r}")
        self._write_memory_viz()
        self._uninstall()
        self._running = False
        if Session._active is self:
            Session._active = None
        self._report = self._build_report(exc, exit_code)
        return self._report

    def report(self) -> Report:
        """The report: final once the session stopped, a snapshot while it runs."""
        if self._report is not None:
            return self._report
        return self._build_report(None, None)

    def breakdown(self) -> dict[str, int]:
        """Live bytes now, by category (the ledger's view; on CUDA `other` is what the allocator
        holds beyond the known categories)."""
        self._guard(self._walk)
        return self._live_by_category()

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
        self._guard(self._begin_explicit)

    def end_step(self) -> None:
        """End the step started by `begin_step`."""
        self._guard(self._end_explicit)

    def step(self) -> None:
        """Mark the end of a step (call it where an iteration ends); the next one starts here.

        The first call ends the step that began with the session.
        """
        self._guard(self._mark_explicit)

    def _begin_explicit(self) -> None:
        if not self._explicit:
            self._explicit = True
            self._pending.clear()
            if self._open is not None:  # the run before the first marked step is no step
                self._discard_open()
        elif self._open is not None:  # begin without end: the previous step ends here
            self._close_open_now()
        self._open_step(time.perf_counter())

    def _end_explicit(self) -> None:
        if self._explicit and self._open is not None:
            self._close_open_now()

    def _mark_explicit(self) -> None:
        self._explicit = True
        self._pending.clear()
        if self._open is not None:
            self._close_open_now()
        self._open_step(time.perf_counter())

    def _close_open_now(self) -> None:
        self._walk()
        step, self._open = self._open, None
        self._fold_peak(step)
        step.end_bytes, step.end_time = self._current_bytes(), time.perf_counter()
        self._close(step)

    def _discard_open(self) -> None:
        """Drop the open step; its peak still counts for the run's peak."""
        step, self._open = self._open, None
        self._fold_peak(step)
        self.timeline.note_peak(step.peak, step.peak_by_category, None)
        self._next_index = step.index  # the first marked step is step 0

    # -- hooks ---------------------------------------------------------------------------------
    def _install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles.append(register_optimizer_step_pre_hook(self._hook(self._on_optimizer_pre)))
        self._handles.append(register_optimizer_step_post_hook(self._hook(self._on_optimizer_post)))
        mm = torch.nn.modules.module
        # Called for every module of every forward: not wrapped, they guard themselves.
        self._handles.append(mm.register_module_forward_pre_hook(self._on_forward_pre))
        try:
            self._handles.append(mm.register_module_forward_hook(self._on_forward_post, always_call=True))
        except TypeError:  # PyTorch < 2.1: no always_call, depth may drift after an exception
            self._handles.append(mm.register_module_forward_hook(self._on_forward_post))

        original_backward = torch.autograd.backward
        session = self

        def backward(*args: Any, **kwargs: Any) -> Any:
            session._phases.append("backward")
            try:
                return original_backward(*args, **kwargs)
            finally:
                session._phases.pop()
                session._guard(session._on_backward_end)

        backward.__wrapped__ = original_backward  # type: ignore[attr-defined]
        torch.autograd.backward = backward

        def restore_backward() -> None:
            if torch.autograd.backward is backward:
                torch.autograd.backward = original_backward

        self._undo.append(restore_backward)


        if self._on_cuda:
            self._install_cuda()
            self._push_saved_hooks()  # no per-op ledger on CUDA: activations come from these
            self._undo.append(lambda: self._pop_saved_hooks(force=True))
        for probe in self.probes:
            probe.start(self)
            self._undo.append(probe.stop)

    def _install_cuda(self) -> None:
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        total = torch.cuda.get_device_properties(index).total_memory
        self.timeline.capacity = self.capacity or total
        if self.capacity is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.capacity / total), index)
            self._undo.append(lambda: torch.cuda.set_per_process_memory_fraction(1.0, index))
        torch.cuda.reset_peak_memory_stats(index)
        if self.history:
            try:
                cuda.start_history()
                self._undo.append(cuda.stop_history)
            except Exception as exc:  # private API: absent or changed in some versions
                self._warn(f"allocation history not recorded ({exc!r})")
                self.history = False

    def _write_memory_viz(self) -> None:
        if not self.memory_viz:
            return
        try:
            if self._on_cuda:
                cuda.dump_snapshot(self.memory_viz)
            elif self.recorder is not None:
                from .gpu.memviz import write_snapshot

                write_snapshot(self.recorder, self.memory_viz)
            self.notes.append(f"memory snapshot: {self.memory_viz} (open it at https://pytorch.org/memory_viz)")
        except Exception as exc:
            self._warn(f"memory snapshot not written to {self.memory_viz} ({exc!r})")

    def _dump_snapshot(self) -> str | None:
        try:
            cuda.dump_snapshot(self.snapshot_path)
        except Exception as exc:
            self._warn(f"memory snapshot not written ({exc!r})")
            return None
        return self.snapshot_path

    def _uninstall(self) -> None:
        self._set_mode(False, force=True)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:
                self._warn(f"could not remove a hook ({exc!r})")
        self._undo.clear()

    def _hook(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a hook so that our own failure is a warning, never the user's exception.

        StepLimitReached is ours on purpose and goes through.
        """

        def hook(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._thread:
                return None  # steps belong to the thread that started the session
            try:
                return fn(*args, **kwargs)
            except (StepLimitReached, torch.OutOfMemoryError):
                raise
            except Exception as exc:
                self._warn(f"internal error in {fn.__name__}: {exc!r}")
                return None

        return hook

    def _guard(self, fn: Callable[[], None]) -> None:
        self._hook(fn)()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.ledger.track(tensor, "activations")
        # Returning the tensor itself would make a reference cycle for tensors an op saves of its
        # own output (grad_fn -> saved output -> grad_fn), keeping them alive until gc runs.
        # Leaves (weights, inputs) have no grad_fn and no such cycle.
        return tensor.detach() if tensor.grad_fn is not None else tensor

    def _on_forward_pre(self, module: torch.nn.Module, args: Any) -> None:
        if threading.get_ident() != self._thread:
            return
        if self._depth == 0:
            self._modules.add(module)
            self._phases.append("forward")
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
                self.timeline.batch_size = int(args[0].shape[0])  # for the batch-size remedy
            for probe in self.probes:
                self._hook(probe.forward_start)(self, module)
        self._depth += 1

    def _on_forward_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._depth == 0 or threading.get_ident() != self._thread:
            return
        self._depth -= 1
        if self._depth == 0:
            if self._phases and self._phases[-1] == "forward":
                self._phases.pop()
            for probe in self.probes:
                self._hook(probe.forward_end)(self, module, output)

    def _on_optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._in_optimizer += 1
        self._phases.append("optimizer")
        self._optimizers.add(optimizer)
        if self._explicit or self._in_optimizer > 1:
            return
        step = self._open
        if step is not None and id(optimizer) in step.stepped:
            # This optimizer already stepped: the iteration ended at the last optimizer step.
            carried = self._take_peak()  # peak since then belongs to the new step
            self._open = None
            self._close(step)
            self._open_step(step.end_time or time.perf_counter(), start_bytes=step.end_bytes)
            self._raise_peak(self._open, *carried)

    def _on_optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._in_optimizer = max(0, self._in_optimizer - 1)
        if self._phases and self._phases[-1] == "optimizer":
            self._phases.pop()
        if self._explicit or self._in_optimizer:
            return
        if not self._optimizer_seen:
            self._optimizer_seen = True
            self._merge_pending()
        step = self._open
        if step is None:
            return
        self._walk()
        self._fold_peak(step)
        step.stepped.add(id(optimizer))
        step.end_bytes, step.end_time = self._current_bytes(), time.perf_counter()

    def _on_backward_end(self) -> None:
        if self._explicit or self._optimizer_seen or self._in_optimizer or self._open is None:
            return
        self._walk()
        step = self._open
        self._fold_peak(step)
        step.end_bytes, step.end_time = self._current_bytes(), time.perf_counter()
        self._pending.append(step)
        self._open = None
        if len(self._pending) > PENDING_BACKWARDS:  # no optimizer is coming: hand-written updates
            self._flush_pending()
        self._open_step(step.end_time, start_bytes=step.end_bytes)

    # -- steps ---------------------------------------------------------------------------------
    def _open_step(self, now: float, start_bytes: int | None = None) -> None:
        index = self._next_index
        self._next_index += 1
        exact = self.exact or index < WARMUP_STEPS or index % self.sample_every == 0
        self._set_mode(exact and self.device.type != "cuda")
        self.ledger.step = index
        # The new step's peak starts now; what peaked since the last step (evaluation between
        # marked steps) still counts for the run's peak.
        self.timeline.note_peak(*self._take_peak(), None)
        start = self._current_bytes() if start_bytes is None else start_bytes
        self._open = _OpenStep(index, start, now, exact or self.device.type == "cuda")

    def _merge_pending(self) -> None:
        """The first optimizer step: backward-only steps before it were micro-batches of step 0."""
        if not self._pending or self._open is None:
            return
        first, step = self._pending[0], self._open
        for held in self._pending[1:] + [step]:
            if held.peak > first.peak:
                first.peak, first.peak_by_category = held.peak, held.peak_by_category
            first.exact = first.exact and held.exact
        step.index, step.start_bytes, step.start_time = first.index, first.start_bytes, first.start_time
        step.peak, step.peak_by_category, step.exact = first.peak, first.peak_by_category, first.exact
        self._next_index = step.index + 1
        self.ledger.step = step.index
        self._pending.clear()

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        for step in pending:
            self._close(step)

    def _finish_steps(self) -> None:
        if self._pending and not self._optimizer_seen:
            self._flush_pending()  # backward-only steps and no optimizer: hand-written updates
        step, self._open = self._open, None
        if step is None:
            return
        self._walk()
        # What ran after the last boundary (evaluation, saving) is no step; its peak counts for
        # the run's peak only.
        trailing = self._take_peak()
        if step.end_bytes is not None and not self._explicit:
            self._close(step)
        else:
            self.timeline.note_peak(step.peak, step.peak_by_category, None)
        self.timeline.note_peak(*trailing, None)

    def _close(self, step: _OpenStep) -> None:
        end = step.end_bytes if step.end_bytes is not None else self._current_bytes()
        end_time = step.end_time if step.end_time is not None else time.perf_counter()
        record = Step(
            index=step.index,
            start_bytes=step.start_bytes,
            peak_bytes=max(step.peak, step.start_bytes, end),
            end_bytes=end,
            duration_s=round(end_time - step.start_time, 6),
            by_category=dict(step.peak_by_category),
            exact=step.exact,
        )
        self.timeline.add(record)
        self.timeline.note_peak(record.peak_bytes, record.by_category, record.index)
        if step.exact and self.timeline.batch_size:
            # What the batch costs: the step's peak beyond parameters and optimizer state. Counting
            # gradients in (backward's temporaries are among them) errs on the safe side.
            live = self.ledger.by_category
            fixed = live["parameters"] + live["optimizer_state"]
            per_sample = max(0, record.peak_bytes - fixed) / self.timeline.batch_size
            self.timeline.per_sample_bytes = max(self.timeline.per_sample_bytes, per_sample)
        for probe in self.probes:
            probe.step_end(self, record)
        if self.stop_after_steps is not None and self.timeline.steps_total >= self.stop_after_steps:
            raise StepLimitReached(f"stopped after {self.timeline.steps_total} steps")

    # -- memory --------------------------------------------------------------------------------
    def _set_mode(self, on: bool, force: bool = False) -> None:
        """Switch the ledger's per-op view (dispatch mode and saved-tensor hooks) on or off.

        Both are per-thread stacks: switch only when ours is on top, never inside
        inference_mode, which restores the thread's whole dispatch key set when it exits and
        would leave PyTorch's dispatcher inconsistent.
        """
        if not force and torch.is_inference_mode_enabled():
            return
        if on and self._mode is None:
            self._mode = LedgerMode(self.ledger, self._category_now)
            self._mode.__enter__()
            if not self._on_cuda:
                self._push_saved_hooks()
        elif not on and self._mode is not None:
            if not force and _get_current_dispatch_mode() is not self._mode:
                return  # the user pushed a mode of their own above ours: keep both as they are
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)
            if not self._on_cuda:
                self._pop_saved_hooks(force)

    def _push_saved_hooks(self) -> None:
        if self._hooks is None:
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
            self._hooks.__enter__()

    def _pop_saved_hooks(self, force: bool = False) -> None:
        top = torch._C._autograd._top_saved_tensors_default_hooks(False)
        if self._hooks is not None and (force or (top is not None and top[0] == self._pack)):
            hooks, self._hooks = self._hooks, None
            hooks.__exit__(None, None, None)

    def _category_now(self) -> str:
        return _PHASE_CATEGORY.get(self._phases[-1], "other") if self._phases else "other"

    def _walk(self) -> None:
        """Count what is known by its role: parameters, gradients, optimizer state.

        Also catches tensors created before the session (a notebook's model) once they are seen.
        The full walk runs on exact steps, on CUDA and where no optimizer is known. Otherwise only
        what changes from step to step is read: the gradients' bytes (without a ledger entry
        each, the cost of which would show on op-heavy steps) and newly created optimizer state.
        """
        track = self.ledger.track
        full = self._mode is not None or not self._optimizers or self._on_cuda
        capacity, self.ledger.capacity = self.ledger.capacity, None  # existing tensors never raise
        grad_bytes = 0
        try:
            if full:
                for module in list(self._modules):
                    for p in module.parameters():
                        track(p, "parameters")
                        if p.grad is not None:
                            track(p.grad, "gradients")
                    for b in module.buffers():
                        track(b, "parameters")
            entries = self.ledger.entries
            for optimizer in list(self._optimizers):
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        if full:
                            track(p, "parameters")
                        grad = p.grad
                        if grad is None:
                            continue
                        if full:
                            track(grad, "gradients")
                        elif id(grad.untyped_storage()) not in entries:
                            grad_bytes += grad.untyped_storage().nbytes()
                state = optimizer.state
                if full or self._state_sizes.get(id(optimizer)) != len(state):
                    self._state_sizes[id(optimizer)] = len(state)
                    for values in state.values():
                        for value in values.values():
                            if isinstance(value, torch.Tensor):
                                track(value, "optimizer_state")
        finally:
            self.ledger.capacity = capacity
        self._grad_bytes = grad_bytes

    def _current_bytes(self) -> int:
        if self._on_cuda:
            return cuda.allocated(self.device.index)[0]
        return self.ledger.total + self._grad_bytes

    def _take_peak(self) -> tuple[int, dict[str, int]]:
        """Peak since the last call and its breakdown, then start a new peak window."""
        peak, by_category = self.ledger.take_peak()
        if self._mode is None and not self._on_cuda:
            # Unsampled step on CPU: the peak is estimated as what is live plus the gradients
            # read at the boundary plus the activations of the last exact step.
            by_category = dict(by_category)
            by_category["gradients"] += self._grad_bytes
            by_category["activations"] += self._activations
            peak += self._grad_bytes + self._activations
        else:
            self._activations = by_category.get("activations", 0)
        if self._on_cuda:
            _, peak, reserved = cuda.allocated(self.device.index)
            # What a cap (set_per_process_memory_fraction) limits is reserved memory: the batch
            # search fits against its peak.
            self.timeline.reserved_peak = max(self.timeline.reserved_peak, reserved)
            torch.cuda.reset_peak_memory_stats(self.device)
            by_category = _with_other(by_category, peak)
        return peak, by_category

    def _fold_peak(self, step: _OpenStep) -> None:
        self._raise_peak(step, *self._take_peak())

    @staticmethod
    def _raise_peak(step: _OpenStep | None, peak: int, by_category: dict[str, int]) -> None:
        if step is not None and peak >= step.peak:
            step.peak, step.peak_by_category = peak, dict(by_category)

    # -- exceptions and OOM --------------------------------------------------------------------
    def record_exception(self, exc: BaseException) -> None:
        """Remember how the run ended, while the failed frames (and their tensors) are alive."""
        if self.timeline.exception is not None or isinstance(exc, StepLimitReached):
            return
        frames = [
            {"file": f.filename, "line": f.lineno, "function": f.name, "code": f.line}
            for f in traceback.extract_tb(exc.__traceback__)
        ]
        self.timeline.exception = {
            "type": type(exc).__name__,
            "message": str(exc).strip().splitlines()[0] if str(exc).strip() else "",
            "frames": frames,
            "phase": _phase_of(frames) or (self._phases[-1] if self._phases else "other"),
            "step": self._open.index if self._open is not None else None,
            "live_bytes": self._current_bytes(),
            "by_category": self._live_by_category(),
            "largest": [
                {"bytes": e.nbytes, "category": e.category, "step": e.step,
                 "site": None if e.site is None else vars(e.site)}
                for e in self.ledger.largest(5)
            ],
            "allocator": cuda.allocator_stats(self.device) if self._on_cuda else None,
        }
        if self._on_cuda and self.history and self._running and _is_oom(exc):
            snapshot = self._dump_snapshot()
            if snapshot:
                self.timeline.exception["snapshot"] = snapshot
                self.notes.append(f"memory snapshot at the OOM: {snapshot} (open it at https://pytorch.org/memory_viz)")

    def _live_by_category(self) -> dict[str, int]:
        by_category = dict(self.ledger.by_category)
        return _with_other(by_category, self._current_bytes()) if self._on_cuda else by_category

    def _on_simulated_oom(self, nbytes: int) -> None:
        self.timeline.add_event("simulated-oom", bytes=nbytes, live_bytes=self.ledger.total)

    # -- report --------------------------------------------------------------------------------
    def _build_report(self, exc: BaseException | None, exit_code: int | None) -> Report:
        from .diagnosis.confirm import confirm_with_lint
        from .diagnosis.detectors import run_detectors

        t = self.timeline
        findings, notes = run_detectors(t)
        findings = confirm_with_lint(findings)
        exception = t.exception
        return Report(
            device=self._device_info(),
            steps=t.steps(),
            steps_total=t.steps_total,
            peak_bytes=t.peak_bytes,
            peak_step=t.peak_step,
            peak_by_category={k: t.peak_by_category.get(k, 0) for k in CATEGORIES},
            findings=findings,
            exit=ExitInfo(
                code=exit_code if exit_code is not None else (1 if exception else 0),
                exception=f"{exception['type']}: {exception['message']}" if exception else None,
            ),
            accounting=self._accounting(),
            command=self.command,
            duration_s=round(time.perf_counter() - self._started_at, 3),
            aggregates=self._aggregates(),
            notes=self.notes + notes,
        )

    def _aggregates(self) -> dict[str, Any]:
        aggregates: dict[str, Any] = {"steps_total": self.timeline.steps_total}
        if self._on_cuda:
            aggregates.update(self._device_view())
        if self.recorder is not None:
            aggregates["predicted_cuda_reserved_peak_bytes"] = self.recorder.predicted_reserved_peak
        if self.timeline.batch_size:
            aggregates["batch_size"] = self.timeline.batch_size
        return aggregates

    def _device_view(self) -> dict[str, Any]:
        view, note = cuda.device_view(self.device, self.timeline.reserved_peak)
        if note and note not in self.notes:
            self.notes.append(note)
        return view

    def _accounting(self) -> str:
        if self._on_cuda:
            return "cuda-allocator"
        return "ledger" if self.exact else "ledger-sampled"

    def _device_info(self) -> Device:
        if self._on_cuda:
            props = torch.cuda.get_device_properties(self.device)
            capacity = self.capacity or props.total_memory
            return Device("cuda", props.name, capacity, self.simulated, self.device.index)
        return Device(self.device.type, _cpu_name(), self.capacity, self.simulated, None)

    def _warn(self, message: str) -> None:
        line = f"oomdoctor: warning: {message}"
        if line not in self.notes:
            self.notes.append(line)
            print(line, file=sys.stderr)


_TORCH = torch.__file__.rsplit("/", 1)[0]


def _is_oom(exc: BaseException) -> bool:
    from .oom import is_oom

    return is_oom(exc)


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


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _with_other(by_category: dict[str, int], total: int) -> dict[str, int]:
    """Known categories from the ledger; what the allocator holds beyond them is `other`."""
    known = {k: v for k, v in by_category.items() if k != "other"}
    return {**known, "other": max(0, total - sum(known.values()))}


def _default_device() -> torch.device:
    """`OOMDOCTOR_DEVICE` (e.g. `cpu` for a CPU-only script on a GPU machine), else the GPU if
    there is one."""
    import os

    if os.environ.get("OOMDOCTOR_DEVICE"):
        return torch.device(os.environ["OOMDOCTOR_DEVICE"])
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _cpu_name() -> str:
    import platform

    return platform.processor() or platform.machine() or "cpu"

