"""The runtime diagnoses on real PyTorch loops: `oomdoctor.track()` and `@oomdoctor.watch` in this
process, `oomdoctor run --json` in a subprocess.

Each bug is reported with the exact line and the holder named as the user wrote it; each clean
pattern that looks like a bug from afar (gradient accumulation, a GAN, logging with `.item()`
or `.detach()`, evaluation under `no_grad`/`inference_mode`, an RL episode, warm-up, a cache
that fills up) gets no finding of these kinds.
"""
from __future__ import annotations

import collections
import inspect
import json
import subprocess
import sys
import textwrap
import warnings
from collections import deque

import pytest
import torch
from torch import nn

import oomdoctor
from conftest import run_cli

KINDS = {"retained-graph", "missing-no-grad", "memory-growth"}


def line_of(fn, text: str) -> int:
    """The line number of the first line of `fn`'s source containing `text`."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def ours(report) -> list:
    return [f for f in report.findings if f.kind in KINDS]


def mlp(width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 16), torch.randint(0, 4, (n,))


# -- retained-graph ----------------------------------------------------------------------------
def test_total_loss_accumulated_as_a_tensor():
    def train():
        model, crit = mlp(), nn.CrossEntropyLoss()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        total_loss = 0
        with oomdoctor.track(quiet=True) as session:
            for _ in range(12):
                x, y = batch()
                loss = crit(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total_loss += loss
        return session.report()

    [f] = ours(train())
    assert f.kind == "retained-graph" and f.evidence["holder"] == "total_loss"
    assert f.location.line == line_of(train, "total_loss += loss")
    assert f.evidence["steps_alive"] >= 8 and f.bytes > 0
    assert (f.remedies[0].before, f.remedies[0].after) == ("total_loss += loss", "total_loss += loss.item()")


class Trainer:
    def __init__(self):
        self.model = mlp()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)
        self.history = {"logits": [], "loss": []}

    def fit(self, steps: int) -> None:
        crit = nn.CrossEntropyLoss()
        for _ in range(steps):
            x, y = batch()
            logits = self.model(x)
            loss = crit(logits, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.history["logits"].append(logits)
            self.history["loss"].append(loss.item())


def test_outputs_kept_in_a_dict_of_lists_on_self():
    with oomdoctor.track(quiet=True) as session:
        Trainer().fit(12)
    [f] = ours(session.report())
    assert f.evidence["holder"] == "self.history['logits']"
    assert f.location.line == line_of(Trainer.fit, 'self.history["logits"].append(logits)')
    assert f.remedies[0].after == 'self.history["logits"].append(logits.detach())'


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 8)
        self.bank = torch.zeros(0, 8)

    def forward(self, x):
        feats = self.proj(x)
        self.bank = torch.cat([self.bank, feats])
        return feats


def test_a_feature_bank_on_a_module_attribute():
    encoder = Encoder()
    opt = torch.optim.SGD(encoder.parameters(), lr=0.01)
    with oomdoctor.track(quiet=True) as session:
        for _ in range(12):
            loss = encoder(batch()[0]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    [f] = ours(session.report())
    assert f.evidence["holder"] == "Encoder.bank"
    assert f.location.line == line_of(Encoder.forward, "self.bank = torch.cat")
    assert f.remedies[0].after == "self.bank = torch.cat([self.bank, feats.detach()])"


def test_the_caller_of_a_watched_step_summing_its_returned_loss():
    model, crit = mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    @oomdoctor.watch(quiet=True)
    def train_step(x, y):
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def loop():
        total = 0
        for _ in range(12):
            total += train_step(*batch())
        return total

    loop()
    [f] = ours(train_step.stop())
    assert f.evidence["holder"] == "total"
    assert f.location.line == line_of(loop, "total += train_step")


def test_an_evaluation_loop_summing_losses_without_no_grad():
    def evaluate():
        model, crit = mlp(), nn.CrossEntropyLoss()
        model.eval()
        with oomdoctor.track(quiet=True) as session:
            val_loss = 0
            for _ in range(12):
                x, y = batch()
                out = model(x)
                val_loss = val_loss + crit(out, y)
        return session.report()

    found = {f.kind: f for f in ours(evaluate())}
    assert set(found) == {"retained-graph", "missing-no-grad"}
    held, wasted = found["retained-graph"], found["missing-no-grad"]
    assert held.evidence["holder"] == "val_loss" and held.location.line == line_of(evaluate, "val_loss = val_loss +")
    assert held.remedies[0].after == "val_loss = val_loss + crit(out, y).item()"
    assert not held.evidence["backward"]  # whole activations are kept, not just nodes
    assert wasted.location.line == line_of(evaluate, "out = model(x)")
    assert wasted.evidence["eval"] and wasted.evidence["unused"] == 12
    assert wasted.bytes >= 8 * 32 * 4  # at least the hidden activations of one pass


def test_missing_no_grad_alone_when_outputs_are_not_kept():
    def evaluate():
        model = mlp()
        correct = 0
        with oomdoctor.track(quiet=True) as session:
            for _ in range(6):
                x, y = batch()
                pred = model(x).argmax(1)
                correct += (pred == y).sum().item()
        return session.report()

    [f] = ours(evaluate())
    assert f.kind == "missing-no-grad" and f.location.line == line_of(evaluate, "pred = model(x)")
    assert not f.evidence["eval"]  # the message does not claim eval() mode when it was not


# -- memory-growth -----------------------------------------------------------------------------
def test_a_list_that_keeps_every_steps_features():
    def train():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 256), nn.ReLU())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        cache = []
        with oomdoctor.track(quiet=True, device="cpu") as session:
            for _ in range(40):
                x, _ = batch(64)
                out = model(x)
                loss = out.pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                cache.append(out.detach().clone())
        return session.report()

    [f] = ours(train())
    assert f.kind == "memory-growth" and f.evidence["holder"] == "cache"
    assert f.location.line == line_of(train, "cache.append(")
    assert f.evidence["bytes_per_step"] == 64 * 256 * 4  # one (64, 256) float32 output per step
    assert f.evidence["projected_oom_step"] > 40


def test_a_history_tensor_grown_with_cat_exact_mode():
    def train():
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        history = torch.zeros(0, 4)
        with oomdoctor.track(quiet=True, device="cpu", exact=True, capacity="64MiB") as session:
            for _ in range(30):
                x, _ = batch(2048)
                out = model(x)
                loss = out.pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                history = torch.cat([history, out.detach()])
        return session.report()

    [f] = ours(train())
    assert f.kind == "memory-growth" and f.evidence["holder"] == "history"
    assert f.location.line == line_of(train, "history = torch.cat")
    assert f.evidence["bytes_per_step"] == 2048 * 4 * 4
    assert f.evidence["capacity_source"] == "--capacity" and f.evidence["projected_oom_step"] < 10_000


def test_without_per_op_sites_the_holder_that_grew_is_named():
    # CUDA is not here: its path (the ledger sees no single op, end bytes come from the allocator)
    # is simulated on CPU by turning the growth probe's ledger path off in an exact session.
    from oomdoctor.probes.growth import GrowthProbe

    def train():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 256), nn.ReLU())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        feats = []
        with oomdoctor.track(quiet=True, device="cpu", exact=True) as session:
            next(p for p in session.probes if isinstance(p, GrowthProbe))._ledger_ops = False
            for _ in range(30):
                out = model(batch(64)[0])
                loss = out.pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                feats.append(out.detach())
        return session.report()

    [f] = ours(train())
    assert f.evidence["holder"] == "feats" and f.location.line == line_of(train, "feats.append(")
    assert f.evidence["bytes_per_step"] == 64 * 256 * 4


# -- the shapes real bugs take (issue 10) ------------------------------------------------------
def train_steps(model: nn.Module, steps: int, on_step=None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = model(batch()[0]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(loss)


class Activations:
    """Grad-CAM style: a forward hook on an inner layer keeps its output."""

    def __init__(self, layer: nn.Module):
        self.activations = []
        layer.register_forward_hook(self.save)

    def save(self, module, inputs, output):
        self.activations.append(output)


def test_a_hook_that_keeps_an_inner_layers_output_within_five_steps():
    model = mlp()
    cam = Activations(model[1])
    with oomdoctor.track(quiet=True) as session:
        train_steps(model, 5)
    [f] = ours(session.report())
    # found through the hook registered on the layer: named by the hook's class
    assert f.kind == "retained-graph" and f.evidence["holder"] == "Activations.activations"
    assert f.location.line == line_of(Activations.save, "self.activations.append(output)")
    assert f.remedies[0].after == "self.activations.append(output.detach())"


class RunningMean(nn.Module):
    """A buffer updated in place from the input: each step's graph chains onto the last."""

    def __init__(self):
        super().__init__()
        self.register_buffer("stored_mean", torch.zeros(32))

    def forward(self, x):
        self.stored_mean[:] = 0.9 * self.stored_mean + 0.1 * x.mean(0)
        return x - x.mean(0)


def test_a_buffer_updated_in_place_from_the_input_chains_every_steps_graph():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), RunningMean(), nn.Linear(32, 4))
    with oomdoctor.track(quiet=True) as session:
        train_steps(model, 8)
    [f] = ours(session.report())
    assert f.kind == "retained-graph" and f.evidence["holder"] == "RunningMean.stored_mean"
    assert f.location.line == line_of(RunningMean.forward, "self.stored_mean[:] =")


def test_raw_tensors_with_retain_graph_one_finding_with_the_activations_kept():
    def train():
        torch.manual_seed(0)
        w1 = torch.randn(16, 256, requires_grad=True)
        w2 = torch.randn(256, 1, requires_grad=True)
        losses = []
        with oomdoctor.track(quiet=True) as session:
            for _ in range(12):
                x = torch.randn(64, 16)
                loss = torch.tanh(x @ w1).matmul(w2).pow(2).mean()
                loss.backward(retain_graph=True)
                with torch.no_grad():
                    for w in (w1, w2):
                        w -= 0.01 * w.grad
                        w.grad = None
                losses.append(loss)
        return session.report()

    [f] = ours(train())  # one bug, one finding: no memory-growth beside it
    assert f.kind == "retained-graph" and f.evidence["holder"] == "losses"
    assert f.location.line == line_of(train, "losses.append(loss)")
    assert f.evidence["backward"]
    # retain_graph=True keeps every step's activations (a (64, 256) tanh output at least)
    assert f.evidence["bytes_per_step"] >= 64 * 256 * 4


class Meter:
    def __init__(self):
        self.sum = 0

    def update(self, value):
        self.sum += value


def test_a_holder_deep_in_a_registry_of_meters_is_named_by_its_path():
    aggregators = {"train": {"loss": Meter(), "acc": Meter()}}
    model = mlp()
    with oomdoctor.track(quiet=True) as session:
        train_steps(model, 8, on_step=lambda loss: aggregators["train"]["loss"].update(loss))
    [f] = ours(session.report())
    assert f.evidence["holder"] == "aggregators['train']['loss'].sum"
    assert f.location.line == line_of(Meter.update, "self.sum += value")
    assert f.remedies[0].after == "self.sum += value.item()"


def test_a_dict_filled_with_a_variable_key_matches_by_structure():
    def train():
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        total_loss = {"box": 0, "cls": 0}
        with oomdoctor.track(quiet=True) as session:
            for _ in range(8):
                out = model(batch()[0])
                parts = {"box": out[:, 0].pow(2).mean(), "cls": out[:, 1].pow(2).mean()}
                opt.zero_grad()
                sum(parts.values()).backward()
                opt.step()
                for name, value in parts.items():
                    total_loss[name] += value
        return session.report()

    [f] = ours(train())
    assert f.kind == "retained-graph" and f.evidence["holder"].startswith("total_loss[")
    assert f.location.line == line_of(train, "total_loss[name] += value")


class Summary:
    """pytorch-pfn-extras style: an online mean, deep inside a manager's extensions."""

    def __init__(self):
        self._x = 0.0

    def add(self, value):
        self._x += value


class DictSummary:
    def __init__(self):
        self._summaries = collections.defaultdict(Summary)


class LogReport:
    def __init__(self):
        self._summary = DictSummary()

    def __call__(self, observation):
        for key, value in observation.items():
            self._summary._summaries[key].add(value)


class ExtensionsManager:
    def __init__(self, extensions):
        self.extensions = list(extensions)

    def observe(self, observation):
        for extension in self.extensions:
            extension(observation)


def test_a_holder_six_steps_below_a_variable_is_found_and_located():
    # manager.extensions[0]._summary._summaries['loss']._x: below the shallow search's depth.
    def train():
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        manager = ExtensionsManager([LogReport()])
        with oomdoctor.track(quiet=True) as session:
            for _ in range(8):
                loss = model(batch()[0]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                manager.observe({"loss": loss})
        return session.report()

    [f] = ours(train())
    assert f.kind == "retained-graph"
    assert f.evidence["holder"] == "manager.extensions[0]._summary._summaries['loss']._x"
    assert f.location.line == line_of(Summary.add, "self._x += value")


class SyncFreeStats:
    """NVIDIA's BERT pretraining: device-side statistics reached through an accessor."""

    def __init__(self):
        self.device_stats = {}

    def add_stat(self, name, device_tensor):
        self.device_stats[name] = device_tensor

    def device_stat(self, name):
        assert self.device_stats[name] is not None
        return self.device_stats[name]


def take_training_step(model, x, stats):
    loss = model(x).pow(2).mean()
    stats.device_stat("average_loss").add_(loss)
    loss.backward()


def test_an_in_place_add_through_an_accessor_in_a_helper_is_the_line():
    # The holder is named from the loop's `stats`; the add_ is in a helper that takes `stats`,
    # through `device_stat(name)`, which returns `self.device_stats[name]`.
    def train():
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        stats = SyncFreeStats()
        stats.add_stat("average_loss", torch.zeros(1))
        with oomdoctor.track(quiet=True) as session:
            for _ in range(8):
                take_training_step(model, batch()[0], stats)
                opt.step()
                opt.zero_grad()
        return session.report()

    [f] = ours(train())
    assert f.kind == "retained-graph" and f.evidence["holder"] == "stats.device_stats['average_loss']"
    assert f.location.line == line_of(take_training_step, ".add_(loss)")
    # In place into a tensor: the fix keeps a tensor (as the upstream fix did), not `.item()`.
    assert f.remedies[0].after == 'stats.device_stat("average_loss").add_(loss.detach())'


class AnchorGenerator(nn.Module):
    """torchvision's anchor cache: one entry per image size, in a private dict."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 4)
        self._cache = {}

    def grid_anchors(self, n):
        grid = torch.arange(n * 1024, dtype=torch.float32).view(n, 1024)
        return [grid * 2, grid + 1]

    def forward(self, x, size):
        key = (size, 1024)
        if key not in self._cache:
            anchors = self.grid_anchors(size)
            self._cache[key] = anchors
        return self.proj(x)


def test_growth_in_a_private_dict_keyed_by_size_is_located_at_the_store():
    # Each entry stays as stored: what grows is the dict, a key at a time; the line to fix is the
    # store into it, not grid_anchors' line that creates the tensors.
    torch.manual_seed(0)
    model = AnchorGenerator()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with oomdoctor.track(quiet=True, device="cpu") as session:
        for step in range(40):
            loss = model(batch()[0], 16 + step).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    [f] = ours(session.report())
    assert f.kind == "memory-growth" and f.evidence["holder"] == "AnchorGenerator._cache"
    assert f.location.line == line_of(AnchorGenerator.forward, "self._cache[key] = anchors")
    assert f.evidence["allocation"]["line"] == line_of(AnchorGenerator.grid_anchors, "return [grid")


class Net:
    """skorch style: one `infer()` for training and validation."""

    def __init__(self):
        self.module = mlp()
        self.opt = torch.optim.SGD(self.module.parameters(), lr=0.01)

    def infer(self, x):
        return self.module(x)

    def train_step(self, x, y):
        self.module.train()
        loss = nn.functional.cross_entropy(self.infer(x), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def validation_step(self, x, y):
        self.module.eval()
        return nn.functional.cross_entropy(self.infer(x), y).item()

    def fit(self, epochs: int) -> None:
        for _ in range(epochs):
            for _ in range(4):
                self.train_step(*batch())
            for _ in range(3):
                self.validation_step(*batch())


def test_a_forward_shared_by_training_and_evaluation_is_judged_per_call():
    with oomdoctor.track(quiet=True) as session:
        Net().fit(3)
    [f] = ours(session.report())
    assert f.kind == "missing-no-grad"
    assert f.location.line == line_of(Net.validation_step, "cross_entropy(self.infer(x), y).item()")


WATCHED = """\
    import torch
    import oomdoctor
    from torch import nn

    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []

    @oomdoctor.watch(quiet=True, json={json!r})
    def train_step(x):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss)

    for _ in range(8):
        train_step(torch.randn(8, 16))
    train_step.stop()
"""


def test_a_watched_step_appending_to_a_module_level_list(tmp_path):
    script = tmp_path / "watched.py"
    script.write_text(textwrap.dedent(WATCHED.format(json=str(tmp_path / "r.json"))))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    [f] = [f for f in json.loads((tmp_path / "r.json").read_text())["findings"] if f["kind"] in KINDS]
    assert f["kind"] == "retained-graph" and f["location"]["line"] == 16
    assert f["remedies"][0]["after"] == "losses.append(loss.item())"


def test_steady_growth_is_seen_within_ten_steps_in_the_default_mode():
    def train(grow_with_cat: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 256), nn.ReLU())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        kept, history = [], torch.zeros(0, 256)
        with oomdoctor.track(quiet=True) as session:
            for _ in range(10):
                out = model(batch(64)[0])
                loss = out.pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                if grow_with_cat:
                    history = torch.cat([history, out.detach()])
                else:
                    kept.append(out.detach().clone())
        return session.report()

    for grow_with_cat, holder, text in ((False, "kept", "kept.append("), (True, "history", "history = torch.cat")):
        [f] = ours(train(grow_with_cat))
        assert f.kind == "memory-growth" and f.evidence["holder"] == holder
        assert f.location.line == line_of(train, text)


def test_batches_built_before_the_session_are_not_growth():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(32, 8, 8), torch.randint(0, 4, (32,))) for _ in range(40)]
    with oomdoctor.track(quiet=True) as session:  # a notebook cell, the pytest fixture
        for x, y in batches:
            loss = nn.functional.cross_entropy(model(x), y)  # the model views each batch
            opt.zero_grad()
            loss.backward()
            opt.step()
    report = session.report()
    assert ours(report) == []
    ends = [s.end_bytes for s in report.steps]
    assert max(ends) - min(ends) < 32 * 8 * 8 * 4  # no batch counted as made by a step


# -- clean patterns ----------------------------------------------------------------------------
def clean_gradient_accumulation_summed_tensors():
    model, crit = mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(8):
        window = 0
        for _ in range(8):
            x, y = batch()
            window = window + crit(model(x), y)
        opt.zero_grad()
        (window / 8).backward()
        opt.step()


def clean_gradient_accumulation_backward_each():
    model, crit = mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(8):
        opt.zero_grad()
        for _ in range(6):
            x, y = batch()
            (crit(model(x), y) / 6).backward()
        opt.step()


def clean_gan():
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
    disc = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    opt_g, opt_d = torch.optim.Adam(gen.parameters()), torch.optim.Adam(disc.parameters())
    bce, losses = nn.BCEWithLogitsLoss(), []
    for _ in range(12):
        real, fake = torch.randn(8, 16), gen(torch.randn(8, 8))
        opt_d.zero_grad()
        d_loss = bce(disc(real), torch.ones(8, 1)) + bce(disc(fake.detach()), torch.zeros(8, 1))
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = bce(disc(fake), torch.ones(8, 1))
        g_loss.backward()
        opt_g.step()
        losses.append((d_loss.detach(), g_loss.item()))


def clean_logging():
    model, crit = mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters())  # state created lazily at the first step
    running, hist, floats = 0.0, [], []
    for _ in range(40):
        x, y = batch()
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        running += loss.item()
        hist.append(loss.detach())
        with warnings.catch_warnings():  # torch warns about float() of a tensor that requires grad
            warnings.simplefilter("ignore", UserWarning)
            floats.append(float(loss))


def clean_evaluation_without_graphs():
    model, crit = mlp(), nn.CrossEntropyLoss()
    model.eval()
    outputs, total = [], 0
    with torch.no_grad():
        for _ in range(12):
            x, y = batch()
            out = model(x)
            outputs.append(out)
            total = total + crit(out, y)
    with torch.inference_mode():
        for _ in range(12):
            x, y = batch()
            outputs.append(model(x))


def clean_rl_episodes():
    policy = mlp()
    opt = torch.optim.SGD(policy.parameters(), lr=0.01)
    for _ in range(4):
        log_probs = []  # the episode's graphs live until its single backward
        for _ in range(24):
            log_probs.append(torch.log_softmax(policy(torch.randn(1, 16)), -1)[0, 0])
        loss = -torch.stack(log_probs).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def clean_cache_that_fills_up():
    model = mlp(width=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    recent = deque(maxlen=8)
    for _ in range(70):
        x, _ = batch(64)
        out = model(x)
        loss = out.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        recent.append(out.detach().clone())


def clean_truncated_bptt():
    rnn, head = nn.GRU(16, 16, batch_first=True), nn.Linear(16, 4)
    opt = torch.optim.SGD([*rnn.parameters(), *head.parameters()], lr=0.01)
    hidden = torch.zeros(1, 4, 16)
    for _ in range(12):
        hidden = hidden.detach()
        out, hidden = rnn(torch.randn(4, 5, 16), hidden)
        loss = head(out).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_an_accumulation_window_cut_short_is_not_a_retained_graph():
    model, crit = mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(KeyboardInterrupt), oomdoctor.track(quiet=True) as session:
        for step in range(3):
            window = 0
            for micro in range(8):
                x, y = batch()
                window = window + crit(model(x), y)
                if step == 2 and micro == 6:
                    raise KeyboardInterrupt  # Ctrl-C with seven graphs waiting for their backward
            opt.zero_grad()
            window.backward()
            opt.step()
    assert ours(session.report()) == []


CLEAN = [clean_gradient_accumulation_summed_tensors, clean_gradient_accumulation_backward_each, clean_gan,
         clean_logging, clean_evaluation_without_graphs, clean_rl_episodes, clean_cache_that_fills_up,
         clean_truncated_bptt]


@pytest.mark.parametrize("loop", CLEAN, ids=[fn.__name__ for fn in CLEAN])
def test_clean_patterns_get_no_finding(loop):
    with oomdoctor.track(quiet=True) as session:
        loop()
    assert ours(session.report()) == []


# -- oomdoctor run ----------------------------------------------------------------------------
SCRIPT = """\
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    crit = nn.CrossEntropyLoss()
    losses = []
    for step in range(12):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss)

    model.eval()
    scores = []
    for step in range(6):
        scores.append(model(torch.randn(8, 16)).softmax(-1).max().item())
    print("done")
"""


def test_oomdoctor_run_reports_both_with_exact_lines(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    result = run_cli("run", "--quiet", "--json", str(tmp_path / "r.json"), str(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"
    findings = {f["kind"]: f for f in json.loads((tmp_path / "r.json").read_text())["findings"]}
    assert set(findings) & KINDS == {"retained-graph", "missing-no-grad"}
    assert findings["retained-graph"]["location"]["line"] == 15
    assert findings["retained-graph"]["location"]["code"] == "losses.append(loss)"
    assert findings["retained-graph"]["evidence"]["holder"] == "losses"
    assert findings["missing-no-grad"]["location"]["line"] == 20
