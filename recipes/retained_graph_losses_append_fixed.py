"""Fixed twin of retained_graph_losses_append.py: the list keeps numbers, not graphs.

    python recipes/retained_graph_losses_append_fixed.py
    oomdoctor run recipes/retained_graph_losses_append_fixed.py

`loss.item()` is a Python float: the list no longer refers to any graph, and each step's graph is
freed after `backward()`. oomdoctor reports no finding.
"""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()

losses = []
for step in range(40):
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())

print(f"first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}")
