# Pattern (fastai-style smoothed loss): an exponential moving average of the loss, kept as a tensor
# and fed the loss tensor itself, but updated under `torch.no_grad()`: the EMA never gets a
# `grad_fn`, so it holds no graph however long training runs. Looks like `ema = b * ema + (1 - b)
# * loss`, the classic graph-chaining bug. Expected: no finding.
import torch
import torch.nn.functional as F
from torch import nn


class SmoothenValue:
    """Create a smooth moving average for a value (loss, etc) using `beta`."""

    def __init__(self, beta):
        self.beta, self.n, self.mov_avg = beta, 0, torch.zeros(())

    def add_value(self, val):
        self.n += 1
        with torch.no_grad():
            self.mov_avg = self.beta * self.mov_avg + (1 - self.beta) * val
            self.smooth = self.mov_avg / (1 - self.beta ** self.n)


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
smoothener = SmoothenValue(0.98)
w = torch.randn(20, 1)
for step in range(40):
    x = torch.randn(64, 20)
    loss = F.mse_loss(model(x), x @ w)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    smoothener.add_value(loss)
    if step % 10 == 9:
        print(f"step {step + 1}: smoothed loss {smoothener.smooth:.4f}")
