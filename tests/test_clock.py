"""The step clock on event sequences alone: no tensors, no PyTorch hooks.

Each test replays what a training loop's hooks would report and checks the steps the user gets.
"""
from __future__ import annotations

import itertools

from oomdoctor.core.clock import PENDING_BACKWARDS, OpenStep, StepClock


class FakeMeter:
    """Bytes rise by one at every boundary; closed steps are collected."""

    def __init__(self) -> None:
        self.bytes = itertools.count(100)
        self.closed: list[OpenStep] = []
        self.outside: list[OpenStep] = []
        self.windows: list[int] = []

    def open_window(self, index: int) -> bool:
        self.windows.append(index)
        return True

    def prepare(self, index: int) -> None:
        pass

    def renumber(self, index: int) -> None:
        pass

    def boundary(self) -> int:
        return next(self.bytes)

    def take_peak(self, step: OpenStep) -> None:
        step.raise_peak(1000 + step.index, {})

    def outside_steps(self, step: OpenStep) -> None:
        self.outside.append(step)

    def close(self, step: OpenStep) -> None:
        self.closed.append(step)


def replay(events: str, failed: bool = False) -> FakeMeter:
    """`events`: space-separated words: `b` (backward), `A`/`B`/`C` (that optimizer steps: pre
    and post), `m` (explicit mark), `f` (a forward), `o` (an optimizer is made), then the session
    finishes (`failed`: the run raised)."""
    meter = FakeMeter()
    clock = StepClock(meter, clock=itertools.count().__next__)
    clock.start()
    for event in events.split():
        if event == "b":
            clock.backward_end()
        elif event == "m":
            clock.mark()
        elif event == "f":
            clock.training_starts()
        elif event == "o":
            clock.optimizer_exists()
        else:
            clock.optimizer_pre(ord(event))
            clock.optimizer_post(ord(event))
    clock.finish(failed=failed)
    return meter


def indices(meter: FakeMeter) -> list[int]:
    return [s.index for s in meter.closed]


def test_one_step_per_optimizer_step():
    assert indices(replay("b A " * 5)) == [0, 1, 2, 3, 4]


def test_a_gan_iteration_with_two_optimizers_is_one_step():
    # GIVEN discriminator and generator each back-propagating and stepping once per iteration
    meter = replay("b A b B " * 4)
    # THEN four iterations are four steps, each with both optimizers
    assert indices(meter) == [0, 1, 2, 3]
    assert all(s.stepped == {ord("A"), ord("B")} for s in meter.closed)


def test_optimizers_that_take_turns_are_not_merged():
    # GIVEN layer-wise training: optimizer A for three steps, then optimizer B for three
    meter = replay("b A " * 3 + "b B " * 3)
    # THEN six steps, each with one optimizer
    assert indices(meter) == [0, 1, 2, 3, 4, 5]
    assert [s.stepped for s in meter.closed] == [{ord("A")}] * 3 + [{ord("B")}] * 3


def test_one_backward_two_optimizers_is_one_step():
    # GIVEN an encoder and a decoder optimizer stepped after one shared backward
    meter = replay("b A B " * 3)
    assert indices(meter) == [0, 1, 2]


def test_gradient_accumulation_is_one_step_per_optimizer_step():
    meter = replay("b b b b A " * 3)
    assert indices(meter) == [0, 1, 2]


def test_hand_written_updates_are_one_step_per_backward():
    meter = replay("b " * 5)
    assert indices(meter) == [0, 1, 2, 3, 4]


def test_backwards_before_the_first_optimizer_step_are_its_micro_batches():
    meter = replay("b b A b b A")
    assert indices(meter) == [0, 1]


def test_nanogpts_40_micro_batches_before_the_first_optimizer_step_are_step_0():
    # nanoGPT's default: gradient_accumulation_steps = 5 * 8 (it once gave 34 steps here); its
    # optimizer is made before training (`o`)
    assert indices(replay("o " + "b " * 40 + "A " + "b " * 40 + "A")) == [0, 1]


def test_no_optimizer_ever_after_many_backwards_flushes_held_steps():
    meter = replay("b " * (PENDING_BACKWARDS + 3))
    assert indices(meter) == list(range(PENDING_BACKWARDS + 3))


def test_explicit_marks_take_precedence():
    # GIVEN an inference loop that marks its iterations, with an optimizer stepping in between
    meter = replay("m b A m b A m")
    # THEN the marks alone decide: what ran before the first mark is step 0
    assert indices(meter) == [0, 1, 2]


def test_what_runs_after_the_last_step_is_no_step_but_counts_for_the_peak():
    meter = replay("b A b A")
    assert indices(meter) == [0, 1]
    assert meter.outside and meter.outside[-1].peak > 0


def test_a_run_that_fails_in_its_first_forward_has_that_step():
    # the post-mortem names the step that failed
    assert indices(replay("f", failed=True)) == [0]


def test_a_run_that_fails_before_training_has_no_step():
    # argparse rejects an argument, a file is missing: nothing trained, so no step 0 of 0 B
    meter = replay("", failed=True)
    assert indices(meter) == [] and len(meter.outside) == 1
