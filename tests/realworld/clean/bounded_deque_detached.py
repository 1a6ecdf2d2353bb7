# Pattern (smoothed loss for a progress bar): the last 10 losses, detached, in a bounded deque.
# Memory fills for 10 steps and stays flat. Expected: no finding.
from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(24, 48), nn.Tanh(), nn.Linear(48, 4))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
recent = deque(maxlen=10)
for step in range(40):
    x, y = torch.randn(32, 24), torch.randint(0, 4, (32,))
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    recent.append(loss.detach())
    if step % 10 == 9:
        print(f"step {step + 1}: smoothed loss {torch.stack(list(recent)).mean():.4f}")
