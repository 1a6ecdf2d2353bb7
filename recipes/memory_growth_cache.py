"""Bug: a cache of feature tensors that only grows.

    python recipes/memory_growth_cache.py
    oomdoctor run recipes/memory_growth_cache.py
    oomdoctor lint recipes/memory_growth_cache.py

No graph is kept here (`.detach()`), but every step appends a 256 x 512 copy of the features
(512 KiB) to `cache` and nothing ever removes one: memory grows by the same amount each step,
and a long run ends out of memory.

oomdoctor reports: memory-growth at line 34 (`cache.append(features.detach().clone())`), about
512 KiB per step.
Fix (memory_growth_cache_fixed.py): keep a bounded window (`del cache[:-8]` after the append, or
`collections.deque(maxlen=8)`), or store the numbers you need instead of whole tensors.
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
    cache.append(features.detach().clone())  # oomdoctor: memory-growth

print(f"cached {len(cache)} batches of features, last loss {loss.item():.4f}")
