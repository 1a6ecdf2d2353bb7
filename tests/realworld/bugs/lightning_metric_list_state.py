# Source: https://github.com/Lightning-AI/pytorch-lightning/issues/4098 ("Memory leak when using
# Metric with list state"; fixed in pull request #4313, "[Metrics] Detach bugfix")
# Bug: a differentiable Dice coefficient written as a `pytorch_lightning.metrics.Metric` with a list
# state is called in `training_step` and its value back-propagated as the loss. `Metric.forward`
# first calls `update()` on the accumulated state, then computes the batch value on a fresh state.
# The accumulated list is only emptied by `compute()`, which training never calls, so it keeps one
# Dice tensor per step, each still attached to its graph (softmax, one-hot, products): "the metric
# quickly consumes all the memory on my single GPU".
# Fix: `Metric.forward` accumulates the state under `torch.no_grad()` (#4313).
# Expected finding: retained-graph at the append in `DifferentiableDiceCoefficient.update`.
import functools
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn


class Metric(nn.Module):
    """`pytorch_lightning.metrics.Metric` of Lightning 1.0: state handling and `forward`."""

    def __init__(self, compute_on_step=True, dist_sync_on_step=False):
        super().__init__()
        self.dist_sync_on_step = dist_sync_on_step
        self.compute_on_step = compute_on_step
        self.update = self._wrap_update(self.update)
        self.compute = self._wrap_compute(self.compute)
        self._computed = None
        self._forward_cache = None
        self._defaults = {}

    def add_state(self, name, default, dist_reduce_fx=None, persistent=True):
        setattr(self, name, default)
        self._defaults[name] = deepcopy(default)

    def forward(self, *args, **kwargs):
        # add current step
        self.update(*args, **kwargs)
        self._forward_cache = None

        if self.compute_on_step:
            # save context before switch
            self._cache = {attr: getattr(self, attr) for attr in self._defaults.keys()}

            # call reset, update, compute, on single batch
            self.reset()
            self.update(*args, **kwargs)
            self._forward_cache = self.compute()

            # restore context
            for attr, val in self._cache.items():
                setattr(self, attr, val)
            self._computed = None

            return self._forward_cache

    def _wrap_update(self, update):
        @functools.wraps(update)
        def wrapped_func(*args, **kwargs):
            self._computed = None
            return update(*args, **kwargs)
        return wrapped_func

    def _wrap_compute(self, compute):
        @functools.wraps(compute)
        def wrapped_func(*args, **kwargs):
            if self._computed is not None:
                return self._computed
            self._computed = compute(*args, **kwargs)
            self.reset()
            return self._computed
        return wrapped_func

    def reset(self):
        for attr, default in self._defaults.items():
            setattr(self, attr, deepcopy(default))


def differentiable_dice_score(input, target, bg=False, nan_score=0.0, no_fg_score=0.0, reduction="elementwise_mean"):
    n_classes = input.shape[1]
    probs = F.softmax(input, dim=1)
    one_hot = F.one_hot(target, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    start = 0 if bg else 1
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)[start:]
    denominator = (probs + one_hot).sum(dims)[start:]
    score = torch.where(denominator > 0, 2 * intersection / denominator.clamp(min=1e-6),
                        torch.full_like(denominator, no_fg_score))
    return score.mean() if reduction == "elementwise_mean" else score


class DifferentiableDiceCoefficient(Metric):
    def __init__(self, include_background=False, nan_score=0.0, no_fg_score=0.0, reduction="elementwise_mean"):
        super().__init__(compute_on_step=True, dist_sync_on_step=False)
        self.include_background = include_background
        self.nan_score = nan_score
        self.no_fg_score = no_fg_score
        self.reduction = reduction
        self.add_state("dice_by_steps", [])

    def update(self, input, target):
        dice = differentiable_dice_score(input, target, bg=self.include_background, nan_score=self.nan_score,
                                         no_fg_score=self.no_fg_score, reduction=self.reduction)
        self.dice_by_steps.append(dice)  # EXPECT: retained-graph

    def compute(self):
        return torch.mean(torch.stack(self.dice_by_steps))


class Segmenter(nn.Module):
    def __init__(self, n_classes=4):
        super().__init__()
        self.module = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                    nn.ReLU(), nn.Conv2d(16, n_classes, 1))
        self._dice = DifferentiableDiceCoefficient(include_background=False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self.module(x)
        dice = self._dice(y_hat, y)
        loss = 1 - dice
        return loss


torch.manual_seed(0)
system = Segmenter()
optimizer = torch.optim.Adam(system.parameters(), lr=1e-3)
for batch_idx in range(48):
    x = torch.rand(8, 1, 64, 64)
    y = (x[:, 0] * 4).long().clamp(max=3)
    loss = system.training_step((x, y), batch_idx)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
