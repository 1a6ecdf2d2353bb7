# Pattern (a notebook: one cell builds the data, the next runs `with oomdoctor.track():`): a clean
# training loop over a list of batches made before the session started. Nothing grows: the
# batches existed before the first step. Expected: no finding (in particular no memory-growth at
# the forward line).
# RUN: python
import os

import torch
import torch.nn.functional as F
from torch import nn

import oomdoctor

torch.manual_seed(0)
batches = [(torch.randn(64, 48), torch.randint(0, 6, (64,))) for _ in range(40)]
model = nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 6))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

with oomdoctor.track(json=os.environ.get("REALWORLD_REPORT"), quiet=True) as session:
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
print(f"loss {loss.item():.4f}; peak {session.report().peak_bytes} bytes")
