"""Fixed twin of retained_graph_feature_bank.py: the bank stores detached features.

    python recipes/retained_graph_feature_bank_fixed.py
    oomdoctor run recipes/retained_graph_feature_bank_fixed.py

`feats.detach()` shares the values but not the graph, so the bank is 256 rows of plain numbers and
each step's graph is freed after `backward()`. oomdoctor reports no finding.
"""
import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    def __init__(self, bank_size: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
        self.bank_size = bank_size
        self.bank = torch.zeros(0, 32)  # recent features, e.g. for nearest-neighbour monitoring

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net(x)
        self.bank = torch.cat([self.bank, feats.detach()])[-self.bank_size:]
        return feats


torch.manual_seed(0)
encoder = Encoder()
head = nn.Linear(32, 10)
optimizer = torch.optim.SGD(list(encoder.parameters()) + list(head.parameters()), lr=0.1)

for step in range(40):
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    loss = F.cross_entropy(head(encoder(x)), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"bank holds {encoder.bank.shape[0]} features, last loss {loss.item():.4f}")
