# Source: https://github.com/hszhao/semseg/issues/60 ("out of memory" during validation)
# Bug: `validate()` sets `model.eval()` but runs `output = model(input)` without
# `torch.no_grad()`: every validation batch records a graph and its activations.
# Fix: `with torch.no_grad(): output = model(input)`.
# Expected finding: missing-no-grad at `output = model(input)` in validate().
import torch
from torch import nn


class AverageMeter:
    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, val, n=1):
        self.sum += val * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def intersection_and_union(output, target, k):
    intersection = output[output == target]
    area_intersection = torch.histc(intersection.float(), bins=k, min=0, max=k - 1)
    area_output = torch.histc(output.float(), bins=k, min=0, max=k - 1)
    area_target = torch.histc(target.float(), bins=k, min=0, max=k - 1)
    return area_intersection, area_output + area_target - area_intersection


def validate(val_loader, model, criterion, classes=5):
    loss_meter, intersection_sum, union_sum = AverageMeter(), 0, 0
    model.eval()
    for i, (input, target) in enumerate(val_loader):
        output = model(input)  # EXPECT: missing-no-grad
        loss = criterion(output, target)
        output = output.max(1)[1]
        intersection, union = intersection_and_union(output, target, classes)
        intersection_sum, union_sum = intersection_sum + intersection, union_sum + union
        loss_meter.update(loss.item(), input.size(0))
    return loss_meter.avg, (intersection_sum / (union_sum + 1e-10)).mean().item()


def train(train_loader, model, criterion, optimizer):
    model.train()
    for input, target in train_loader:
        output = model(input)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 5, 1))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
train_loader = [(torch.rand(4, 3, 32, 32), torch.randint(0, 5, (4, 32, 32))) for _ in range(10)]
val_loader = [(torch.rand(4, 3, 32, 32), torch.randint(0, 5, (4, 32, 32))) for _ in range(5)]
for epoch in range(4):
    train(train_loader, model, criterion, optimizer)
    print(f"epoch {epoch}: loss/mIoU {validate(val_loader, model, criterion)}")
