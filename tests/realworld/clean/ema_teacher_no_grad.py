# Pattern (mean-teacher / BYOL / DINO style): an EMA teacher updated and run under no_grad.
# Looks like a leak to a naive tool: a second model's parameters change every step and its
# outputs feed the loss. Nothing of it keeps a graph. Expected: no finding.
import copy

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
student = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
teacher = copy.deepcopy(student)
for p in teacher.parameters():
    p.requires_grad_(False)
optimizer = torch.optim.SGD(student.parameters(), lr=0.05)


@torch.no_grad()
def update_teacher(decay: float = 0.99) -> None:
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s, alpha=1 - decay)


for step in range(40):
    x = torch.randn(32, 32)
    y = torch.randint(0, 10, (32,))
    with torch.no_grad():
        targets = F.softmax(teacher(x + 0.1 * torch.randn_like(x)), dim=1)
    logits = student(x)
    loss = F.cross_entropy(logits, y) + F.kl_div(F.log_softmax(logits, dim=1), targets, reduction="batchmean")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    update_teacher()
print(f"loss {loss.item():.4f}")
