"""Fixed twin of retained_graph_history.py: the history keeps logits without their graphs.

    python recipes/retained_graph_history_fixed.py
    oomdoctor run recipes/retained_graph_history_fixed.py

`logits.detach()` shares the values but not the graph, so each step's graph is freed after
`backward()`; `.cpu()` moves the kept values off the GPU, where they would otherwise add up step
after step (on a CPU run it changes nothing). oomdoctor reports no finding.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Trainer:
    def __init__(self, model: nn.Module):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        self.history = {"loss": [], "logits": []}

    def fit(self, steps: int) -> None:
        for step in range(steps):
            x = torch.randn(32, 64)
            y = torch.randint(0, 10, (32,))
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.history["loss"].append(loss.item())
            self.history["logits"].append(logits.detach().cpu())


torch.manual_seed(0)
trainer = Trainer(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
trainer.fit(40)
print(f"kept {len(trainer.history['logits'])} logits, last loss {trainer.history['loss'][-1]:.4f}")
