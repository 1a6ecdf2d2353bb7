"""Bug: `total_loss += loss` keeps the autograd graph of every step alive.

    python recipes/retained_graph_total_loss.py
    oomdoctor run recipes/retained_graph_total_loss.py
    oomdoctor lint recipes/retained_graph_total_loss.py

`loss` is a tensor that carries the graph that computed it. Adding it to `total_loss`, which lives
across steps, makes `total_loss` a tensor whose graph links to the graphs of all earlier steps:
none of them can be freed, and memory grows with every step until the run dies.

oomdoctor reports: retained-graph at line 33 (`total_loss += loss`), held by `total_loss`.
Fix (retained_graph_total_loss_fixed.py): add a Python number, not the tensor:

    total_loss += loss.item()
"""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
steps = 40

total_loss = 0
for step in range(steps):
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    total_loss += loss  # oomdoctor: retained-graph

print(f"mean loss {total_loss / steps:.4f}")
