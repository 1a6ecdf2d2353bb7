# Source: https://github.com/facebookresearch/fairchem/pull/199 ("Resolves validation gpu memory issue")
# Bug: the trainer's `validate()` reuses the training forward (`self._forward(batch)`) without
# `torch.no_grad()`: validation memory (up to 8.1 GB) exceeded training's (up to 4.5 GB), since
# every validation batch records a graph for a backward that never comes.
# Fix: wrap the validation forward and loss in `with torch.no_grad():`.
# Expected finding: missing-no-grad at `out = self._forward(batch)` in validate().
import torch
import torch.nn.functional as F
from torch import nn


class ForceEnergyModel(nn.Module):
    def __init__(self, hidden: int = 64):
        super().__init__()
        self.embed = nn.Linear(3, hidden)
        self.interaction = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.energy_head = nn.Linear(hidden, 1)
        self.force_head = nn.Linear(hidden, 3)

    def forward(self, pos):
        h = self.interaction(self.embed(pos))
        return {"energy": self.energy_head(h).sum(dim=1).squeeze(-1), "forces": self.force_head(h)}


class ForcesTrainer:
    def __init__(self, model):
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def _forward(self, batch):
        return self.model(batch["pos"])

    def _compute_loss(self, out, batch):
        return F.l1_loss(out["energy"], batch["energy"]) + 100 * F.l1_loss(out["forces"], batch["forces"])

    def validate(self, loader):
        self.model.eval()
        metrics = {"energy_mae": 0.0, "n": 0}
        for batch in loader:
            out = self._forward(batch)  # EXPECT: missing-no-grad
            loss = self._compute_loss(out, batch)
            metrics["energy_mae"] += (out["energy"] - batch["energy"]).abs().sum().item()
            metrics["n"] += len(batch["energy"])
        self.model.train()
        return metrics["energy_mae"] / metrics["n"], loss.item()

    def train(self, train_loader, val_loader, epochs=4):
        for epoch in range(epochs):
            for batch in train_loader:
                out = self._forward(batch)
                loss = self._compute_loss(out, batch)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
            print(f"epoch {epoch}: val energy MAE, loss = {self.validate(val_loader)}")


def make_batches(n, atoms=20):
    return [{"pos": torch.randn(8, atoms, 3), "energy": torch.randn(8), "forces": torch.randn(8, atoms, 3)}
            for _ in range(n)]


torch.manual_seed(0)
ForcesTrainer(ForceEnergyModel()).train(make_batches(10), make_batches(5))
