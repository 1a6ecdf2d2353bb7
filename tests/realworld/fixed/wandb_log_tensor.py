# Source: https://github.com/wandb/wandb/issues/354 ("Memory leak using pytorch")
# Bug: the loss tensor itself is logged (`wandb.log({"loss": loss})`) and the logger keeps every
# row in its history, a global of another module: "my code consumes around 40GB of memory in
# less than an hour just by logging the loss values", gone with `loss.item()`.
# The store happens in the library (`_runlog.log`), not in the training loop.
# Fix: log `loss.item()`.
# Fixed twin: the loss is logged as a float.
import torch
import torch.nn.functional as F
from torch import nn

import _runlog as wandb

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(40, 128), nn.ReLU(), nn.Linear(128, 40))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(40):
    x = torch.randn(64, 40)
    loss = F.mse_loss(model(x), x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    wandb.log({"loss": loss.item(), "lr": optimizer.param_groups[0]["lr"]})
print(f"final loss {float(wandb.summary()['loss']):.4f}")
