# Pattern: gradient accumulation over 4 micro-batches: graphs of several micro-batches are alive
# together within an optimizer step by design (each backward frees its own), and the loss
# is summed for logging with `.item()`. Expected: no finding.
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
accumulation_steps = 4
log_loss = 0.0
optimizer.zero_grad()
for micro_step in range(160):
    x, y = torch.randn(16, 32), torch.randint(0, 4, (16,))
    loss = F.cross_entropy(model(x), y) / accumulation_steps
    loss.backward()
    log_loss += loss.item()
    if (micro_step + 1) % accumulation_steps == 0:
        optimizer.step()
        optimizer.zero_grad()
print(f"mean loss {log_loss / 40:.4f}")
