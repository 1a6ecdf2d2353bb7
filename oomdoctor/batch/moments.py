"""The peaks of a training run, moment by moment: what lets the batch-size search see a kink early.

Contract: `with PeakMoments() as moments:` around a running session (`oomdoctor run`, `track()`)
records `moments.values`: the bytes live at each local peak of the run (each allocation that a
release follows, and the last one), in program order.

Why: the same program at another batch size makes the same allocations and releases in the same
order, only of other sizes, and most sizes are affine in the batch size (a (b, 512) activation,
a weight). So each moment's live bytes lie on a line of its own, and the run's peak at any batch
size is the largest of those lines. Two trials give every line: where the peak moves from the
optimizer step to backward, or from the end of backward to the end of forward, is known before a
trial runs there (search.py). A local peak that is not the run's peak at one size may be at another.

It reads the session's per-op ledger (told of every new storage and every release), so it
measures only where the ledger sees every op: CPU runs with a simulated capacity, `--exact`.
Elsewhere `values` stays empty and the search fits the run's peak alone. It never raises into the
user's program: a session without the expected ledger leaves it empty.
"""
from __future__ import annotations

from typing import Any

MAX_MOMENTS = 1_000_000  # past this many local peaks the run is not recorded (memory): the search falls back


class PeakMoments:
    def __init__(self) -> None:
        self.values: list[int] = []
        self.overflow = False
        self._ledger: Any = None
        self._inner: Any = None
        self._rising = False  # the latest event was an allocation: a release now ends a local peak
        self._handles: list[Any] = []

    def __enter__(self) -> PeakMoments:
        import torch
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        # Under `oomdoctor run` the session starts after this object: attach at the first forward,
        # before the first step's activations (the session exists by then), or, for code without
        # modules, at the first optimizer step (the same in every trial, so moments still align).
        self._handles = [torch.nn.modules.module.register_module_forward_pre_hook(lambda *_: self._attach()),
                         register_optimizer_step_pre_hook(lambda *_: self._attach())]
        self._attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._unhook()
        if self._ledger is not None:
            if self._rising:
                self._record(self._ledger.total)
            if self._ledger.listener == self._listen:  # bound methods: equal, never identical
                self._ledger.listener = self._inner
            self._ledger = None
        if self.overflow:
            self.values = []

    def _attach(self) -> None:
        if self._ledger is not None:
            return
        from ..session import Session

        session = Session.current()
        ledger = getattr(session, "ledger", None)
        if ledger is None or not getattr(session, "exact", False) or not hasattr(ledger, "listener"):
            return
        self._ledger, self._inner = ledger, ledger.listener
        ledger.listener = self._listen
        # The hooks stay until the end: the optimizer iterates its hooks while calling them, and
        # removing one from there would break the step. Attached, they return at once.

    def _unhook(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _listen(self, action: str, key: int, nbytes: int, site: Any) -> None:
        if self._inner is not None:
            self._inner(action, key, nbytes, site)
        if action == "alloc":
            self._rising = True
        elif self._rising:  # the ledger subtracts after telling us: total is still the peak
            self._rising = False
            self._record(self._ledger.total)

    def _record(self, total: int) -> None:
        if len(self.values) >= MAX_MOMENTS:
            self.overflow = True
            return
        self.values.append(total)
