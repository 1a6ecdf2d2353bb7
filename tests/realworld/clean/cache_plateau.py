# Pattern: a cache that fills up and then plateaus: positional encodings memoized per sequence
# length, with lengths drawn from a small set (8 lengths) - memory rises for the first steps and
# then stays flat. Expected: no finding.
import math

import torch
import torch.nn.functional as F
from torch import nn

_pe_cache = {}


def positional_encoding(length: int, dim: int) -> torch.Tensor:
    if length not in _pe_cache:
        position = torch.arange(length).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(length, dim)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)
        _pe_cache[length] = pe
    return _pe_cache[length]


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
lengths = [16, 24, 32, 40, 48, 56, 64, 72]
for step in range(40):
    length = lengths[step % len(lengths)]
    x = torch.randn(8, length, 32) + positional_encoding(length, 32)
    loss = F.mse_loss(model(x), x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"cached lengths {sorted(_pe_cache)}; loss {loss.item():.4f}")
