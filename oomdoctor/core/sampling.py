"""Which steps the per-op view watches.

The per-op view (the ledger's dispatch mode and the global module hooks) costs ~7 us per op, ~3x
on an op-heavy CPU step. It watches the first `WARMUP_STEPS` steps (lazily created optimizer
state, warm-up) and then one step in `every`; the other steps cost a constant amount of Python
work. An optimizer over parameters no earlier optimizer had (distillation or fine-tuning after a
pre-training phase) starts a new phase: its first `PHASE_STEPS` steps are watched too, as a model
first called after the warm-up is otherwise not seen inside before the next sampled step (a
distillation of 18 steps after 6 of pre-training never was). At most one such phase per `every`
steps, so a program that makes a new model each step pays at most twice the sampling. `--exact`
and a simulated capacity (which the ledger enforces op by op) watch every step.
The decision depends on the step index only, never on the device.
"""
from __future__ import annotations

WARMUP_STEPS = 4
SAMPLE_EVERY = 32
PHASE_STEPS = 2


class Sampler:
    def __init__(self, always: bool = False, every: int = SAMPLE_EVERY, warmup: int = WARMUP_STEPS):
        self.always = always
        self.every = max(1, every)
        self.warmup = warmup
        self._phase = range(0)
        self._next_phase = 0

    def new_phase(self, index: int) -> None:
        """Watch the steps from `index` on like a warm-up (a new optimizer's first steps)."""
        if self.always or index < self.warmup or index < self._next_phase:
            return
        self._phase = range(index, index + PHASE_STEPS)
        self._next_phase = index + self.every

    def exact(self, index: int) -> bool:
        return self.always or index < self.warmup or index % self.every == 0 or index in self._phase
