"""Fixed twin of memory_growth_cache.py: the cache keeps a bounded window.

    python recipes/memory_growth_cache_fixed.py
    oomdoctor run recipes/memory_growth_cache_fixed.py

After each append the cache drops all but the last 8 entries, so memory rises for 8 steps and
then stays flat. oomdoctor reports no finding.
"""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
backbone = nn.Sequential(nn.Linear(64, 512), nn.ReLU())
head = nn.Linear(512, 10)
optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.1)

cache = []  # features of recent batches, e.g. to inspect drift
for step in range(40):
    x = torch.randn(256, 64)
    y = torch.randint(0, 10, (256,))
    features = backbone(x)
    loss = F.cross_entropy(head(features), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    cache.append(features.detach().clone())
    del cache[:-8]  # keep the last 8 batches: memory stops growing after 8 steps

print(f"cached {len(cache)} batches of features, last loss {loss.item():.4f}")
