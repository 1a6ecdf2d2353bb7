"""Bug: `losses.append(loss)` keeps one autograd graph per step in a list.

    python recipes/retained_graph_losses_append.py
    oomdoctor run recipes/retained_graph_losses_append.py
    oomdoctor lint recipes/retained_graph_losses_append.py

The list outlives the loop, and each `loss` in it still refers to the graph that computed it, so
no step's graph is ever freed: the list grows by one graph per step.

oomdoctor reports: retained-graph at line 30 (`losses.append(loss)`), held by `losses`.
Fix (retained_graph_losses_append_fixed.py): keep the number, `losses.append(loss.item())`
(or `loss.detach()` to keep a tensor without its graph).
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
    losses.append(loss)  # oomdoctor: retained-graph

print(f"first loss {losses[0]:.4f}, last loss {losses[-1]:.4f}")
