# Source: https://github.com/visionml/pytracking/pull/313
# Bug: `LTRTrainer._update_stats()` hands the actor's stats to `AverageMeter.update`, and a stat
# that is a tensor with gradients is summed as such: "the gradient graph will be accumulated
# during training and won't be released". The holder sits deep: `self.stats['train']['Loss/total']`
# is a meter whose `sum` chains every batch's graph. Fix: `.item()` a tensor before updating.
# Expected finding: retained-graph at `self.sum += val * n` (in the helper the step calls).
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class AverageMeter:
    """Computes and stores the average and current value."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = 0
        self.avg = 0
        self.sum = 0
        self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n  # EXPECT: retained-graph
        self.count += n
        self.avg = self.sum / self.count


class Loader:
    def __init__(self, name, batches):
        self.name, self.batches, self.stack_dim = name, batches, 0

    def __iter__(self):
        return iter(self.batches)


class IoUNetActor:
    def __init__(self, net):
        self.net = net

    def __call__(self, data):
        iou_pred = self.net(data["train_images"]).squeeze(-1)
        loss = F.mse_loss(iou_pred, data["proposal_iou"])
        stats = {"Loss/total": loss, "Loss/iou": loss * 0.5}
        return loss, stats


class LTRTrainer:
    def __init__(self, actor, loaders, optimizer):
        self.actor, self.loaders, self.optimizer = actor, loaders, optimizer
        self.stats = OrderedDict({loader.name: None for loader in loaders})

    def cycle_dataset(self, loader):
        for i, data in enumerate(loader, 1):
            loss, stats = self.actor(data)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            batch_size = data["train_images"].shape[loader.stack_dim]
            self._update_stats(stats, batch_size, loader)

    def _update_stats(self, new_stats: OrderedDict, batch_size, loader):
        if loader.name not in self.stats.keys() or self.stats[loader.name] is None:
            self.stats[loader.name] = OrderedDict({name: AverageMeter() for name in new_stats.keys()})
        for name, val in new_stats.items():
            if name not in self.stats[loader.name].keys():
                self.stats[loader.name][name] = AverageMeter()
            self.stats[loader.name][name].update(val, batch_size)

    def train_epoch(self):
        for loader in self.loaders:
            self.cycle_dataset(loader)


torch.manual_seed(0)
net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 64), nn.ReLU(), nn.Linear(64, 1))
batches = [{"train_images": torch.rand(8, 3, 16, 16), "proposal_iou": torch.rand(8)} for _ in range(40)]
trainer = LTRTrainer(IoUNetActor(net), [Loader("train", batches)], torch.optim.Adam(net.parameters(), lr=1e-3))
trainer.train_epoch()
print(f"train loss {float(trainer.stats['train']['Loss/total'].avg):.4f}")
