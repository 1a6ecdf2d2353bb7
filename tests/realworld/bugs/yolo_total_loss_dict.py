# Source: https://github.com/MultimediaTechLab/YOLO/pull/83
# Bug: the epoch's loss totals live in `defaultdict(lambda: torch.tensor(0.0))` and each loss
# term is added as a tensor: every batch's graph stays alive until the epoch ends (1-2 MB leaked
# per batch). Fix: `total_loss = defaultdict(float)` and `+= loss_val.item() * batch_size`.
# Expected finding: retained-graph at `total_loss[loss_name] += loss_val * batch_size`.
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn


class TinyDetector(nn.Module):
    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.SiLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.SiLU())
        self.head = nn.Conv2d(16, 4 + 1 + num_classes, 1)

    def forward(self, images):
        return self.head(self.backbone(images))


class YOLOLoss:
    def __call__(self, predicts, targets):
        box, obj, cls = predicts[:, :4], predicts[:, 4], predicts[:, 5:]
        return {
            "Loss/BoxLoss": F.smooth_l1_loss(box, targets["boxes"]),
            "Loss/DFLoss": F.binary_cross_entropy_with_logits(obj, targets["objectness"]),
            "Loss/BCELoss": F.cross_entropy(cls, targets["classes"]),
        }


class ModelTrainer:
    def __init__(self, model):
        self.model = model
        self.loss_fn = YOLOLoss()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.device = torch.device("cpu")

    def train_one_batch(self, images, targets):
        predicts = self.model(images)
        loss_each = self.loss_fn(predicts, targets)
        loss = sum(loss_each.values())
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss_each

    def train_one_epoch(self, dataloader):
        self.model.train()
        total_loss = defaultdict(lambda: torch.tensor(0.0, device=self.device))
        total_samples = 0
        for batch_size, images, targets in dataloader:
            loss_each = self.train_one_batch(images, targets)
            for loss_name, loss_val in loss_each.items():
                total_loss[loss_name] += loss_val * batch_size  # EXPECT: retained-graph
            total_samples += batch_size
        return {name: value / total_samples for name, value in total_loss.items()}


def dataloader(steps: int, batch_size: int = 4):
    for _ in range(steps):
        targets = {"boxes": torch.rand(batch_size, 4, 8, 8), "objectness": torch.rand(batch_size, 8, 8).round(),
                   "classes": torch.randint(0, 4, (batch_size, 8, 8))}
        yield batch_size, torch.rand(batch_size, 3, 32, 32), targets


torch.manual_seed(0)
epoch_loss = ModelTrainer(TinyDetector()).train_one_epoch(dataloader(40))
print({name: round(float(value), 4) for name, value in epoch_loss.items()})
