"""Bug: a Trainer keeps the model's outputs, with their graphs, in `self.history`.

    python recipes/retained_graph_history.py
    oomdoctor run recipes/retained_graph_history.py
    oomdoctor lint recipes/retained_graph_history.py

`logits` comes out of the model with its autograd graph attached. Storing it in a dict that lives
as long as the Trainer keeps every step's logits and graph alive, so memory grows with each step.

oomdoctor reports: retained-graph at line 36 (`self.history["logits"].append(logits)`),
held by `self.history`, in Trainer.fit.
Fix (retained_graph_history_fixed.py): keep the values without the graph, and off the GPU:
`self.history["logits"].append(logits.detach().cpu())`, or only the numbers you need.
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
            self.history["logits"].append(logits)  # oomdoctor: retained-graph


torch.manual_seed(0)
trainer = Trainer(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
trainer.fit(40)
print(f"kept {len(trainer.history['logits'])} logits, last loss {trainer.history['loss'][-1]:.4f}")
