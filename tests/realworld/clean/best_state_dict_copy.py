# Pattern (every "save the best model" loop): a deep copy of the state_dict is kept whenever the
# validation loss improves. The copy replaces the previous one; it holds no graph.
# Expected: no finding.
import copy

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
val_x, val_y = torch.randn(64, 16), torch.randn(64, 1)
best_loss, best_state = float("inf"), None
for step in range(40):
    x, y = torch.randn(32, 16), torch.randn(32, 1)
    loss = F.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 5 == 4:
        model.eval()
        with torch.no_grad():
            val_loss = F.mse_loss(model(val_x), val_y).item()
        model.train()
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(model.state_dict())
model.load_state_dict(best_state)
print(f"best validation loss {best_loss:.4f}")
