"""Which steps the per-op view watches.

The per-op view (the ledger's dispatch mode and the global module hooks) costs ~7 us per op, ~3x
on an op-heavy CPU step. It watches the first `WARMUP_STEPS` steps (lazily created optimizer
state, warm-up) and then one step in `every`; the other steps cost a constant amount of Python
work. `--exact` and a simulated capacity (which the ledger enforces op by op) watch every step.
The decision depends on the step index only, never on the device.
"""
from __future__ import annotations

WARMUP_STEPS = 4
SAMPLE_EVERY = 32


class Sampler:
    def __init__(self, always: bool = False, every: int = SAMPLE_EVERY, warmup: int = WARMUP_STEPS):
        self.always = always
        self.every = max(1, every)
        self.warmup = warmup

    def exact(self, index: int) -> bool:
        return self.always or index < self.warmup or index % self.every == 0
