# Source: https://github.com/pfnet/pytorch-pfn-extras/pull/49 ("Use detach instead of clone to avoid
# retention of computational graph in reporter")
# Bug: `ppe.reporting.report({'train/loss': loss})` copies a reported tensor with `value.clone()`,
# which the docstring says is "copied without preserving the computational graph" - but `clone()`
# is differentiable. `LogReport` then sums the observations of the whole epoch in its
# `DictSummary`, so every iteration's graph stays alive until the epoch's log line.
# Fix (the PR): `_copy_variable` returns `value.detach()`.
# Expected finding: retained-graph at `self._x += weight * value` (Summary.add).
import collections
import contextlib

import numpy
import torch
import torch.nn.functional as F
from torch import nn

# ---- pytorch_pfn_extras.reporting / training, abridged from v0.2.1 ------------------------------

_reporters = []


def _copy_variable(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    return value


class Reporter:
    def __init__(self):
        self.observation = {}

    @contextlib.contextmanager
    def scope(self, observation):
        old = self.observation
        self.observation = observation
        _reporters.append(self)
        try:
            yield
        finally:
            _reporters.pop()
            self.observation = old

    def report(self, values):
        """Reports observed values.

        If a value is of type `torch.Tensor`, the variable is copied without preserving the
        computational graph and the new variable object purged from the graph is stored.
        """
        values = {k: _copy_variable(v) for k, v in values.items()}
        self.observation.update(values)


def report(values):
    if _reporters:
        _reporters[-1].report(values)


class Summary:
    """Online summarization of a sequence of scalars."""

    def __init__(self):
        self._x = 0.0
        self._x2 = 0.0
        self._n = 0

    def add(self, value, weight=1):
        self._x += weight * value  # EXPECT: retained-graph
        self._x2 += weight * value * value
        self._n += weight

    def compute_mean(self):
        x, n = self._x, self._n
        return x / n


class DictSummary:
    def __init__(self):
        self._summaries = collections.defaultdict(Summary)

    def add(self, d):
        summaries = self._summaries
        for k, v in d.items():
            w = 1
            if isinstance(v, tuple):
                w = v[1]
                v = v[0]
            if numpy.isscalar(v) or getattr(v, 'ndim', -1) == 0:
                summaries[k].add(v, weight=w)

    def compute_mean(self):
        return {name: summary.compute_mean() for name, summary in self._summaries.items()}


class LogReport:
    """Accumulates the observations and emits their means every `trigger` epochs."""

    def __init__(self, trigger_epochs=1):
        self._trigger_epochs = trigger_epochs
        self._log = []
        self._init_summary()

    def __call__(self, manager):
        self._summary.add(manager.observation)
        if manager.is_epoch_end and manager.epoch % self._trigger_epochs == 0:
            stats = self._summary.compute_mean()
            entry = {key: float(value) for key, value in stats.items()}
            entry['epoch'] = manager.epoch
            entry['iteration'] = manager.iteration
            self._log.append(entry)
            print(entry)
            # reset the summary for the next output
            self._init_summary()

    def _init_summary(self):
        self._summary = DictSummary()


class ExtensionsManager:
    def __init__(self, models, optimizers, max_epochs, iters_per_epoch, extensions=()):
        self.models = models
        self.optimizers = optimizers
        self.max_epochs = max_epochs
        self._iters_per_epoch = iters_per_epoch
        self.iteration = 0
        self.extensions = list(extensions)
        self.reporter = Reporter()
        self.observation = {}

    @property
    def epoch(self):
        return self.iteration // self._iters_per_epoch

    @property
    def is_epoch_end(self):
        return self.iteration % self._iters_per_epoch == 0

    @property
    def stop_trigger(self):
        return self.epoch >= self.max_epochs

    @contextlib.contextmanager
    def run_iteration(self, step_optimizers=()):
        self.observation = {}
        for name in step_optimizers:
            self.optimizers[name].zero_grad()
        with self.reporter.scope(self.observation):
            yield
            for name in step_optimizers:
                self.optimizers[name].step()
        self.iteration += 1
        for extension in self.extensions:
            extension(self)


# ---- the user's training script (pytorch-pfn-extras MNIST example style) -----------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1)
        self.conv2 = nn.Conv2d(8, 16, 3, 1)
        self.fc1 = nn.Linear(16 * 5 * 5, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)


def train(manager, model, train_loader):
    while not manager.stop_trigger:
        model.train()
        for _, (data, target) in enumerate(train_loader):
            with manager.run_iteration(step_optimizers=['main']):
                output = model(data)
                loss = F.nll_loss(output, target)
                report({'train/loss': loss})
                loss.backward()


torch.manual_seed(0)
images, labels = torch.randn(640, 1, 14, 14), torch.randint(0, 10, (640,))
train_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=32, shuffle=True)
model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
manager = ExtensionsManager({'main': model}, {'main': optimizer}, max_epochs=2,
                            iters_per_epoch=len(train_loader), extensions=[LogReport()])
train(manager, model, train_loader)
