# Pattern: learning-rate range test (modelled on https://github.com/davidtvs/pytorch-lr-finder/blob/259970af0c4fb973ba9171e5802b4031fd6706cc/torch_lr_finder/lr_finder.py)
# `LRFinder` deep-copies the model's and optimizer's state_dicts once (in-memory StateCacher), then
# trains with an exponentially increasing lr, recording `history["lr"]` and a smoothed
# `history["loss"]` (Python floats) every iteration, and restores the saved states at the end. With
# gradient accumulation, `_train_batch` does `total_loss = loss` then `total_loss += loss` on loss
# tensors that carry graphs - but `total_loss` is a local returned as `.item()`, each loss was
# already back-propagated, and it dies when the call returns. Expected: no finding.
import copy

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler


class ExponentialLR(LRScheduler):
    """Exponentially increases the learning rate between two boundaries over a number of iterations."""

    def __init__(self, optimizer, end_lr, num_iter, last_epoch=-1):
        self.end_lr = end_lr
        self.num_iter = num_iter
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        r = self.last_epoch / (self.num_iter - 1)
        return [base_lr * (self.end_lr / base_lr) ** r for base_lr in self.base_lrs]


class StateCacher:
    def __init__(self):
        self.cached = {}

    def store(self, key, state_dict):
        self.cached.update({key: copy.deepcopy(state_dict)})

    def retrieve(self, key):
        return self.cached.get(key)


class TrainDataLoaderIter:
    def __init__(self, data_loader):
        self.data_loader = data_loader
        self._iterator = iter(data_loader)

    def __next__(self):
        try:
            return next(self._iterator)
        except StopIteration:  # auto_reset
            self._iterator = iter(self.data_loader)
            return next(self._iterator)


class LRFinder:
    def __init__(self, model, optimizer, criterion):
        self.optimizer = optimizer
        self.model = model
        self.criterion = criterion
        self.history = {"lr": [], "loss": []}
        self.best_loss = None
        self.state_cacher = StateCacher()
        self.state_cacher.store("model", self.model.state_dict())
        self.state_cacher.store("optimizer", self.optimizer.state_dict())

    def reset(self):
        self.model.load_state_dict(self.state_cacher.retrieve("model"))
        self.optimizer.load_state_dict(self.state_cacher.retrieve("optimizer"))

    def range_test(self, train_loader, end_lr=10, num_iter=100, smooth_f=0.05, diverge_th=5, accumulation_steps=1):
        self.history = {"lr": [], "loss": []}
        self.best_loss = None
        lr_schedule = ExponentialLR(self.optimizer, end_lr, num_iter)
        train_iter = TrainDataLoaderIter(train_loader)
        for iteration in range(num_iter):
            loss = self._train_batch(train_iter, accumulation_steps)
            self.history["lr"].append(lr_schedule.get_lr()[0])
            lr_schedule.step()
            if iteration == 0:
                self.best_loss = loss
            else:
                if smooth_f > 0:
                    loss = smooth_f * loss + (1 - smooth_f) * self.history["loss"][-1]
                if loss < self.best_loss:
                    self.best_loss = loss
            self.history["loss"].append(loss)
            if loss > diverge_th * self.best_loss:
                print("Stopping early, the loss has diverged")
                break

    def _train_batch(self, train_iter, accumulation_steps):
        self.model.train()
        total_loss = None  # for late initialization
        self.optimizer.zero_grad()
        for i in range(accumulation_steps):
            inputs, labels = next(train_iter)
            outputs = self.model(inputs)
            loss = self.criterion(outputs, labels)
            # Loss should be averaged in each step
            loss /= accumulation_steps
            loss.backward()
            if total_loss is None:
                total_loss = loss
            else:
                total_loss += loss
        self.optimizer.step()
        return total_loss.item()


torch.manual_seed(0)
w = torch.randn(16, 4)
train_loader = []
for _ in range(10):
    x = torch.randn(32, 16)
    train_loader.append((x, (x @ w).argmax(1)))
net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
lr_finder = LRFinder(net, optimizer, nn.CrossEntropyLoss())
lr_finder.range_test(train_loader, end_lr=1, num_iter=40, accumulation_steps=2)
losses, lrs = lr_finder.history["loss"], lr_finder.history["lr"]
steepest = min(range(1, len(losses)), key=lambda i: losses[i] - losses[i - 1])
print(f"{len(losses)} lrs tried, best loss {lr_finder.best_loss:.4f}, steepest at lr {lrs[steepest]:.2e}")
lr_finder.reset()
