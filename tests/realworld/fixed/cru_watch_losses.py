# Source: https://github.com/boschresearch/Continuous-Recurrent-Units/pull/4
# ("Computation graph of losses are held in memory because of not using `.item()`")
# Bug: the training step, watched with `@oomdoctor.watch` (no `oomdoctor run`), records each
# step's loss tensor in a module-level list for the epoch summary: every step's graph stays alive.
# Fix: `epoch_losses.append(loss.item())`.
# Fixed twin: losses recorded as floats.
# RUN: python
import os

import torch
import torch.nn.functional as F
from torch import nn

import oomdoctor

torch.manual_seed(0)
model = nn.GRU(8, 32, batch_first=True)
readout = nn.Linear(32, 8)
optimizer = torch.optim.Adam([*model.parameters(), *readout.parameters()], lr=1e-3)
epoch_losses = []


@oomdoctor.watch(json=os.environ.get("REALWORLD_REPORT"), quiet=True)
def train_step(obs, targets):
    output, _ = model(obs)
    loss = F.mse_loss(readout(output), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    epoch_losses.append(loss.item())
    return loss


for step in range(40):
    series = torch.randn(16, 13, 8).cumsum(dim=1)
    train_step(series[:, :-1], series[:, 1:])
print(f"epoch loss {sum(float(l) for l in epoch_losses) / len(epoch_losses):.4f}")
