"""Clean: gradient accumulation that sums losses as tensors, on purpose.

    python recipes/clean_grad_accumulation.py
    oomdoctor run recipes/clean_grad_accumulation.py

The losses of 4 micro-batches are added up as tensors (their graphs are needed), then one
`backward()` on the sum frees all four graphs, and the sum is reset. Nothing outlives the
optimizer step: oomdoctor reports no finding (its `retained-graph` check knows this pattern).
"""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
accumulate = 4  # micro-batches per optimizer step

accumulated = 0
running = 0.0
for i in range(30 * accumulate):
    x = torch.randn(16, 64)
    y = torch.randint(0, 10, (16,))
    accumulated = accumulated + loss_fn(model(x), y) / accumulate
    if (i + 1) % accumulate == 0:
        optimizer.zero_grad()
        accumulated.backward()
        optimizer.step()
        running += accumulated.item()
        accumulated = 0

print(f"mean loss {running / 30:.4f}")
