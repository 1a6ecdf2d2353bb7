# Pattern (Switch Transformer / MoE load balancing): each router stores its auxiliary loss on
# `self.aux_loss` during forward, and the training step adds every router's `aux_loss` to the task
# loss and back-propagates it in the same step. The attribute keeps a tensor with a `grad_fn`
# between steps, but only the latest one (the next forward overwrites it), and its graph is the
# one that was just back-propagated. Expected: no finding.
import torch
import torch.nn.functional as F
from torch import nn


class MoELayer(nn.Module):
    def __init__(self, dim=32, n_experts=4, hidden=64):
        super().__init__()
        self.router = nn.Linear(dim, n_experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
                                     for _ in range(n_experts))
        self.aux_loss = None

    def forward(self, x):
        probs = self.router(x).softmax(dim=-1)
        top = probs.argmax(dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            chosen = top == e
            if chosen.any():
                out[chosen] = expert(x[chosen]) * probs[chosen, e, None]
        # Switch load-balancing loss: fraction of tokens routed to each expert x mean router prob.
        fraction = F.one_hot(top, len(self.experts)).float().mean(dim=0)
        self.aux_loss = len(self.experts) * (fraction * probs.mean(dim=0)).sum()
        return x + out


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 32), MoELayer(), MoELayer(), nn.Linear(32, 4))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for step in range(40):
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    task_loss = F.cross_entropy(model(x), y)
    aux_loss = sum(m.aux_loss for m in model.modules() if isinstance(m, MoELayer))
    loss = task_loss + 0.01 * aux_loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 10 == 9:
        print(f"step {step + 1}: task loss {task_loss.item():.4f}, balance loss {aux_loss.item():.4f}")
