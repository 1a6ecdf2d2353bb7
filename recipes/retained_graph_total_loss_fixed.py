"""Fixed twin of retained_graph_total_loss.py: the running total is a Python number.

    python recipes/retained_graph_total_loss_fixed.py
    oomdoctor run recipes/retained_graph_total_loss_fixed.py

`loss.item()` copies the value out of the tensor, so nothing outside the step refers to its graph
and each step's graph is freed right after `backward()`. oomdoctor reports no finding.
"""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
steps = 40

total_loss = 0.0
for step in range(steps):
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    total_loss += loss.item()

print(f"mean loss {total_loss / steps:.4f}")
