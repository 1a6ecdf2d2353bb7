"""Where a session's bytes come from: one meter, three sources.

- CUDA: the caching allocator's statistics give the totals and each step's peak, exactly and for
  free; the ledger (below) tells what the bytes are on sampled steps, and on the others the parts
  read cheaply (parameters, gradients, optimizer state) are subtracted from the measured total.
- CPU, sampled step (and `--exact`, `--capacity`): the tensor ledger's per-op view sees every
  storage: exact totals, peaks and categories.
- CPU, other steps: the C heap's in-use bytes (core/heap.py, rationed readings), read at a few
  points per step and calibrated against the ledger while every step so far was watched (the
  difference is the rest of the heap). The peak between two points is not seen: it is
  estimated as the highest point
  plus the headroom the last sampled step's window of the same role (passes, optimizer step)
  had above its own highest point (core/headroom.py), and marked as an estimate. Once a step went unwatched, the ledger misses what was made then (a cache that
  grows): later sampled steps add what the heap holds beyond the ledger, as `other`.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Callable, Iterator

import torch

from ..probes import cuda
from ..probes.ledger import Ledger
from ..report.model import empty_categories
from .clock import OpenStep
from .headroom import Headroom
from .heap import Heap

_KNOWN = ("parameters", "gradients", "optimizer_state")


class MemoryMeter:
    """Implements the step clock's `Meter`: bytes at boundaries, peaks per step."""

    def __init__(self, ledger: Ledger, device: torch.device, on_cuda: bool,
                 choose_exact: Callable[[int], bool], note_outside: Callable[[OpenStep], None],
                 close: Callable[[OpenStep], None]):
        self.ledger = ledger
        self.device = device
        self.on_cuda = on_cuda
        self.choose_exact = choose_exact  # sampling decision; switches the per-op view
        self._note_outside = note_outside
        self._close = close
        self.exact_window = False
        self._prepared: int | None = None  # the step index the current way of measuring is for
        self.modules: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()
        self.optimizers: "weakref.WeakSet[torch.optim.Optimizer]" = weakref.WeakSet()
        self.reserved_peak = 0  # CUDA: what a cap (per-process memory fraction) limits
        self._state_sizes: dict[int, int] = {}  # optimizer id -> len(state) at the last walk
        self._grad_bytes = 0  # gradients not in the ledger (steps without the per-op view)
        self._activations = 0  # the last watched step's activations at its peak: the fallback estimate
        self._per_forward = 0  # ... and per forward whose graph is kept (episodes of varying length)
        # Forwards with grad since the last backward (their graphs are all alive: an episode),
        # and the most of them at once in this window. Micro-batches each end in a backward.
        self._segment = 0
        self._forwards = 0
        self.heap = Heap()  # CPU: the total on steps the per-op view skips
        self._complete = True  # every step so far was watched op by op: the ledger has it all
        self._unseen = 0  # bytes the heap holds beyond the ledger, once a step went unwatched
        # A watched window's peak above its highest point: an unwatched window's peak is
        # estimated from its own highest reading plus the headroom of its role.
        self.headroom = Headroom()
        self._role = "pass"  # "optimizer" once an optimizer step ended in this window
        self._fresh = False  # a watched step begins: its first window replaces what the last one left
        self._points_max = self._bounds_max = self._last_bound = 0
        # Categories at the highest point and at the boundary that is a watched window's base.
        self._at_points_max: dict[str, int] = {}
        self._at_bound: dict[str, int] = {}
        self._read_inside = False  # a heap reading inside this window, not only at its boundaries
        self._active = False  # a forward, backward or optimizer step ended in this window
        self._point_at_max: dict[str, int] = {}

    # -- the clock's Meter ---------------------------------------------------------------------
    def prepare(self, index: int) -> None:
        if self._prepared != index:
            self._prepared = index
            self.ledger.step = index
            self.exact_window = self._fresh = self.choose_exact(index)
            if self._fresh:
                self.headroom.new_step()
            self.heap.new_window()
            if not self.exact_window:
                self._complete = False

    def open_window(self, index: int) -> bool:
        self.prepare(index)
        exact = self.exact_window
        self.ledger.step = index
        leftover = OpenStep(index, 0, 0.0, exact)
        self.take_peak(leftover)
        if leftover.peak:
            self._note_outside(leftover)
        return exact or self.on_cuda

    def renumber(self, index: int) -> None:
        self.ledger.step = index

    def boundary(self) -> int:
        self.walk()
        current = self.current_bytes()
        if self.exact_window or self.on_cuda:
            self.point(boundary=True)
        else:  # current_bytes read the heap already
            self._raise_points(current)
            self._last_bound = current
        return current

    def take_peak(self, step: OpenStep) -> None:
        if self.on_cuda:
            _, peak, reserved = cuda.allocated(self.device.index)
            self.reserved_peak = max(self.reserved_peak, reserved)
            torch.cuda.reset_peak_memory_stats(self.device)
            by_category = self.ledger.take_peak()[1] if self.exact_window else self._known()
            step.raise_peak(peak, _with_other(by_category, peak, "other" if self.exact_window else "activations"))
        elif self.exact_window:
            peak, by_category = self.ledger.take_peak()
            activations = by_category.get("activations", 0)
            self._activations = self._over_step(activations, self._activations)
            self._per_forward = self._over_step(activations // self._forwards if self._forwards else 0,
                                                self._per_forward)
            for kind, base, at_base in (("inside", self._points_max, self._at_points_max),
                                        ("boundary", max(self._bounds_max, self._last_bound), self._at_bound)):
                if base:
                    self.headroom.record(kind, self._role, peak, base, by_category, at_base)
            self._fresh = False
            if self._unseen:
                by_category = dict(by_category)
                by_category["other"] += self._unseen
            step.raise_peak(peak + self._unseen, by_category)
        elif self.heap.offset is not None and not self._active:
            self.ledger.take_peak()  # nothing ran here (between two boundaries): no peak to guess
            step.raise_peak(self._points_max, self._point_at_max or self._estimate(self._points_max), estimated=True)
        elif self.heap.offset is not None:
            self.ledger.take_peak()
            kind = "inside" if self._read_inside else "boundary"
            base = self._points_max if kind == "inside" else max(self._points_max, self._last_bound)
            above = self.headroom.estimate(kind, self._role)
            by_category = dict(self._point_at_max or self._estimate(base))
            for category, value in above.items():
                by_category[category] = by_category.get(category, 0) + value
            step.raise_peak(base + sum(above.values()), by_category, estimated=True)
        else:
            # No cheap total here: what is live, the gradients read at the boundary and the
            # activations of the last exact step, scaled by the forwards whose graphs were alive
            # at once (a reinforcement-learning episode of 500 forwards keeps 500 forwards' worth;
            # 4 micro-batches, each followed by its backward, keep one's).
            peak, by_category = self.ledger.take_peak()
            activations = self._per_forward * self._forwards if self._forwards and self._per_forward else self._activations
            by_category = dict(by_category)
            by_category["gradients"] += self._grad_bytes
            by_category["activations"] += activations
            step.raise_peak(peak + self._grad_bytes + activations, by_category, estimated=True)
        self._points_max = self._bounds_max = 0
        self._at_points_max = {}
        self._read_inside = self._active = False
        self._role = "pass"
        self._forwards = 0
        self._point_at_max = {}

    def _over_step(self, value: int, so_far: int) -> int:
        """The most over the windows of one watched step: its first window replaces what the
        last watched step left."""
        return value if self._fresh else max(value, so_far)

    def optimizer_ran(self) -> None:
        """An optimizer step ends in this window: its peak is of the optimizer's kind."""
        self._role = "optimizer"
        self._active = True

    def outside_steps(self, step: OpenStep) -> None:
        self._note_outside(step)

    def close(self, step: OpenStep) -> None:
        self._close(step)

    # -- cheap points (forward and backward ends, optimizer steps) -----------------------------
    def point(self, boundary: bool = False, forward: bool = False, backward: bool = False) -> None:
        """Read the total at a point of interest (`forward`: a top-level forward with grad
        ended; `backward`: a backward pass ended); on CPU steps without the per-op view this is
        the only view of what happens inside the step (the readings are rationed: core/heap.py)."""
        if self.on_cuda:
            return
        self._active |= not boundary
        self._segment = 0 if backward else self._segment + forward
        self._forwards = max(self._forwards, self._segment)
        if self.exact_window:
            total = self.ledger.total
            if total > self._points_max:
                self._points_max = total
                self._at_points_max = dict(self.ledger.by_category)
            if boundary:
                if total >= self._bounds_max:
                    self._at_bound = dict(self.ledger.by_category)
                self._bounds_max = max(self._bounds_max, total)
                self._last_bound = total
            total = self.ledger.total + self._grad_bytes
            heap = self.heap.read()
            if heap is not None and (self._complete or self.heap.offset is None):
                self.heap.calibrate(heap - total, step=self._prepared or 0, peak=self.ledger.peak)
            elif heap is not None and self.heap.offset is not None:
                self._unseen = max(0, heap - self.heap.offset - total)
            return
        reads = self.heap.reads
        self._raise_points(self.heap.total(self.ledger.total + self._grad_bytes))
        self._read_inside |= not boundary and self.heap.reads > reads

    def _raise_points(self, total: int | None) -> None:
        if total is not None and total > self._points_max and self.heap.offset is not None:
            self._points_max = total
            self._point_at_max = self._estimate(total)

    # -- reading -------------------------------------------------------------------------------
    def current_bytes(self) -> int:
        if self.on_cuda:
            return cuda.allocated(self.device.index)[0]
        known = self.ledger.total + self._grad_bytes
        if not self._complete:
            total = self.heap.total(known)
            if total is not None:
                return total
        return known

    def live_by_category(self, rest: str = "other") -> dict[str, int]:
        """Live bytes by category. On CUDA what the ledger does not know goes to `rest`
        (activations, when asked in the middle of a forward or backward pass)."""
        if self.on_cuda:
            return _with_other(dict(self.ledger.by_category), self.current_bytes(), "other" if self.exact_window else rest)
        if not self.exact_window and self.heap.offset is not None:
            return self._estimate(self.current_bytes())
        return dict(self.ledger.by_category)

    def _known(self) -> dict[str, int]:
        by_category = {k: self.ledger.by_category[k] for k in _KNOWN}
        by_category["gradients"] += self._grad_bytes
        return by_category

    def _estimate(self, total: int) -> dict[str, int]:
        """Categories of a total the ledger did not see op by op: the known parts, what the
        ledger still holds as other, and the rest as activations."""
        by_category = empty_categories()
        by_category.update(self._known())
        by_category["other"] = min(self.ledger.by_category["other"], max(0, total - sum(by_category.values())))
        by_category["activations"] = max(0, total - sum(by_category.values()))
        return by_category

    # -- tensors known by their role -----------------------------------------------------------
    def adopt_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer was made: its parameters are parameters from now on."""
        self.optimizers.add(optimizer)
        with self._no_capacity():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    self.ledger.track(p, "parameters")

    def adopt(self, module: torch.nn.Module) -> int:
        """A root module seen for the first time: count its parameters and buffers now, so that
        they are parameters from the first step on (also when forward runs inside
        `optimizer.step(closure)` or no optimizer exists). Returns the bytes newly counted."""
        if module in self.modules:
            return 0
        self.modules.add(module)
        before = self.ledger.total
        with self._no_capacity():
            for p in module.parameters():
                self.ledger.track(p, "parameters")
            for b in module.buffers():
                self.ledger.track(b, "parameters")
        return self.ledger.total - before

    def walk(self) -> None:
        """Count what is known by its role: parameters, gradients, optimizer state.

        Also catches tensors created before the session (a notebook's model) once they are seen.
        The full walk runs on exact steps, on CUDA and where no optimizer is known. Otherwise only
        what changes from step to step is read: the gradients' bytes (without a ledger entry
        each, the cost of which would show on op-heavy steps) and newly created optimizer state.
        """
        track = self.ledger.track
        full = self.exact_window or not self.optimizers or self.on_cuda
        grad_bytes = 0
        with self._no_capacity():
            if full:
                for module in list(self.modules):
                    for p in module.parameters():
                        track(p, "parameters")
                        if p.grad is not None:
                            track(p.grad, "gradients")
                    for b in module.buffers():
                        track(b, "parameters")
            entries = self.ledger.entries
            for optimizer in list(self.optimizers):
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        if full:
                            track(p, "parameters")
                        grad = p.grad
                        if grad is None:
                            continue
                        if full:
                            track(grad, "gradients")
                            continue
                        storage = getattr(grad, "_local_tensor", grad).untyped_storage()  # FSDP: the shard
                        if id(storage) not in entries:
                            grad_bytes += storage.nbytes()
                state = optimizer.state
                if full or self._state_sizes.get(id(optimizer)) != len(state):
                    self._state_sizes[id(optimizer)] = len(state)
                    for values in state.values():
                        for value in values.values():
                            if isinstance(value, torch.Tensor):
                                track(value, "optimizer_state")
        self._grad_bytes = grad_bytes

    @contextlib.contextmanager
    def _no_capacity(self) -> Iterator[None]:
        """Tensors that already exist never raise the simulated OOM."""
        capacity, self.ledger.capacity = self.ledger.capacity, None
        try:
            yield
        finally:
            self.ledger.capacity = capacity

def _with_other(by_category: dict[str, int], total: int, rest: str) -> dict[str, int]:
    """Known categories from the ledger; what the allocator holds beyond them goes to `rest`."""
    result = empty_categories()
    result.update({k: v for k, v in by_category.items() if k != rest})
    result[rest] = max(0, total - sum(v for k, v in result.items() if k != rest))
    return result
