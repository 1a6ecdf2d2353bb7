"""Growth that does not happen at every step: in one jump an epoch (an evaluation between steps
pushes what nothing pops), spread over many holders (hooks registered again and again), in two
holders at once (a metric's two list states), with autograd graphs attached (a hook that keeps
a layer's training outputs), and what must stay silent beside it (a list emptied every epoch, a
tensor that only views a storage remade bigger elsewhere).

The default mode watches 1 step in 32 op by op: what the steps between make, and what runs
between steps, leaves no survivors the ledger could see. The growth probe reads it from the end
bytes (the calibrated heap on CPU) and sizes the user's holders; the detector judges the holders'
own bytes. Real PyTorch under `oomdoctor.track()`; the rules on hand-built timelines.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

import oomdoctor
from oomdoctor.core.timeline import Timeline
from oomdoctor.diagnosis.detectors import growth
from oomdoctor.probes.growth import rose_by_spans
from oomdoctor.report.model import Step

KINDS = {"retained-graph", "missing-no-grad", "memory-growth"}
KiB = 1024
MiB = 1024 * KiB


def line_of(fn, text: str) -> int:
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def ours(report) -> list:
    return [f for f in report.findings if f.kind in KINDS]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def sgd_step(model, opt, x) -> None:
    loss = model(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


# -- in a real session -------------------------------------------------------------------------
class Recorder:
    """A forward hook that keeps the layer's input for a backward hook to pop (Opacus' pattern)."""

    def __init__(self, layer: nn.Module):
        self.kept: list[torch.Tensor] = []
        layer.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        if module.training:
            self.kept.append(inputs[0].detach())

    def pop(self) -> None:
        if self.kept:
            self.kept.pop()


def test_growth_in_one_jump_an_epoch_during_evaluation_between_steps():
    def train():
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        recorder = Recorder(model[2])
        val = torch.randn(256, 64)
        with oomdoctor.track(quiet=True) as session:
            for epoch in range(12):
                for _ in range(4):
                    sgd_step(model, opt, torch.randn(16, 64))
                    recorder.pop()  # training pops what its forward pushed
                with torch.no_grad():  # model left in train mode: pushes 4 inputs nobody pops
                    for i in range(0, 256, 64):
                        model(val[i:i + 64])
        return session.report()

    [f] = ours(train())
    assert f.kind == "memory-growth" and f.evidence["holder"] == "Recorder.kept"
    assert f.location.line == line_of(Recorder.hook, "self.kept.append(")
    # 4 inputs of (64, 256) float32 an epoch of 4 steps
    assert f.evidence["bytes_per_step"] == 64 * 256 * 4


class Curve:
    """A metric with two list states that nothing resets (torchmetrics' list states)."""

    def __init__(self):
        self.preds: list[torch.Tensor] = []
        self.target: list[torch.Tensor] = []

    def update(self, preds, target):
        self.preds.append(preds.flatten())
        self.target.append(target.flatten())

    def compute(self):
        return torch.cat(self.preds).mean() - torch.cat(self.target).float().mean()


def test_two_holders_growing_once_an_epoch_are_two_findings_at_their_two_lines():
    def train():
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        curve = Curve()
        with oomdoctor.track(quiet=True) as session:
            for epoch in range(16):
                for _ in range(3):
                    sgd_step(model, opt, torch.randn(16, 64))
                with torch.no_grad():  # validation_epoch_end: a full set of maps an epoch
                    for _ in range(2):
                        curve.update(torch.rand(8, 64, 64), torch.randint(0, 2, (8, 64, 64), dtype=torch.int32))
                    curve.compute()
        return session.report()

    found = {(f.kind, f.location.line) for f in ours(train())}
    assert found == {("memory-growth", line_of(Curve.update, "self.preds.append(")),
                     ("memory-growth", line_of(Curve.update, "self.target.append("))}


class ActivationHook:
    """Hooks registered at every evaluation and never removed (NeuroBench's pattern): each later
    training forward appends its activations, graph attached, to every stale hook's list."""

    def __init__(self, layer: nn.Module):
        self.outputs: list[torch.Tensor] = []
        layer.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        self.outputs.append(output)


def test_stale_hooks_keeping_training_outputs_are_a_retained_graph_at_the_append():
    def train():
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        hooks = []
        with oomdoctor.track(quiet=True) as session:
            for epoch in range(12):
                for _ in range(4):
                    sgd_step(model, opt, torch.randn(64, 64))
                if epoch % 3 == 0:
                    hooks = [ActivationHook(model[1])]  # the old hook stays on the layer
        return session.report()

    [f] = ours(train())
    assert f.kind == "retained-graph" and f.location.line == line_of(ActivationHook.hook, "self.outputs.append(")
    assert f.evidence["holder"] == "ActivationHook.outputs"


def test_a_list_emptied_every_epoch_and_a_view_of_a_remade_storage_are_not_growth():
    def train():
        model = net()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        epoch_outputs, history = [], torch.zeros(0)
        best = None
        with oomdoctor.track(quiet=True) as session:
            for epoch in range(8):
                for _ in range(6):
                    x = torch.randn(64, 64)
                    sgd_step(model, opt, x)
                    with torch.no_grad():
                        epoch_outputs.append(model[:2](x))  # 64 KiB a step, emptied each epoch
                history = torch.cat([history, torch.randn(64 * 256)])  # made bigger, then viewed
                best = history[-1:]  # one element viewing the whole storage
                epoch_outputs = []
        return session.report(), best

    report, _ = train()
    assert ours(report) == []


# -- the rules ---------------------------------------------------------------------------------
def survivors(**over) -> dict:
    e = {"kind": "survivors", "all_exact": False, "capacity": None, "capacity_source": "ram", "scans": 0,
         "holder": None, "holder_series": [], "location": None}
    return {**e, **over}


def timeline_with(event: dict, steps: int = 48) -> Timeline:
    t = Timeline()
    for i in range(steps):
        t.add(Step(index=i, start_bytes=MiB, peak_bytes=2 * MiB, end_bytes=MiB, duration_s=0.01))
    t.add_event(**event)
    return t


STORE = {"file": "/work/train.py", "line": 66, "function": "hook", "code": "self.kept.append(x.detach())"}


def test_a_holder_that_jumps_once_an_epoch_grows():
    # measured every step from step 10: +1 MiB at every 4th step, flat between
    series = [[i, MiB * (i // 4), 8 * (i // 4), 8 * (i // 4)] for i in range(10, 48)]
    [f] = growth.detect(timeline_with(survivors(holder="kept", location=STORE, holder_series=series)))
    assert f.kind == "memory-growth" and f.location.line == 66
    assert f.evidence["bytes_per_step"] == MiB // 4


def test_a_list_emptied_every_epoch_does_not_grow_however_it_rises_within_one():
    # +256 KiB a step, emptied every 10 steps: within an epoch it rises at 9 steps in 10
    series = [[i, 256 * KiB * (i % 10), i % 10, i % 10] for i in range(10, 48)]
    event = survivors(holder="outputs", location=STORE, holder_series=series)
    assert growth.detect(timeline_with(event)) == []


def test_a_tensor_that_keeps_its_elements_while_its_bytes_grow_only_views_a_storage():
    # `value = thresholds[i]`: one element, its storage remade bigger each epoch
    series = [[i, MiB * (i // 3), 1, 1] for i in range(10, 48)]
    assert growth.detect(timeline_with(survivors(holder="value", location=STORE, holder_series=series))) == []


def test_each_growing_holder_is_a_finding_at_its_statement_and_one_line_is_one_finding():
    series = [[i, 64 * KiB * i, i, i] for i in range(10, 48)]
    other = {**STORE, "line": 67}
    holders = [{"holder": "Linear.activations", "holder_series": series, "location": STORE},
               {"holder": "Linear.activations", "holder_series": series, "location": STORE},
               {"holder": "target", "holder_series": series, "location": other}]
    found = growth.detect(timeline_with(survivors(holders=holders)))
    assert sorted((f.location.line, f.evidence["bytes_per_step"]) for f in found) == [(66, 128 * KiB),
                                                                                      (67, 64 * KiB)]


def test_a_growing_holder_whose_tensors_carry_graphs_is_a_retained_graph():
    series = [[i, 64 * KiB * i, i, i] for i in range(10, 48)]
    holders = [{"holder": "ActivationHook.outputs", "holder_series": series, "location": STORE,
                "graph": {"tensors": 16, "nodes": 48}}]
    [f] = growth.detect(timeline_with(survivors(holders=holders)))
    assert f.kind == "retained-graph" and f.location.line == 66 and "ActivationHook.outputs" in f.title


def test_end_bytes_rising_over_equal_spans_start_a_search_at_the_scale_of_the_jumps():
    staircase = [(i, MiB * (i // 5)) for i in range(40)]  # one jump every 5 steps
    span, rise = rose_by_spans(staircase)
    assert span == 8 and rise >= MiB
    every_step = [(i, 64 * KiB * i) for i in range(10)]
    assert rose_by_spans(every_step) == (2, 128 * KiB)
    plateau = [(i, MiB * min(i, 12)) for i in range(40)]  # a cache that filled up
    assert rose_by_spans(plateau) is None
    assert rose_by_spans([(i, MiB + 100 * i) for i in range(40)]) is None  # under a KiB a step
