# Pattern: mixed precision on CPU with `torch.autocast(dtype=torch.bfloat16)`: casted weight
# copies are made (and cached) inside the autocast region each step and freed at its exit.
# Expected: no finding.
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
running = 0.0
for step in range(40):
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    running += loss.item()
print(f"mean loss {running / 40:.4f}")
