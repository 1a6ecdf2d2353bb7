"""Clean: a cache that fills during the first steps, then stays the same size.

    python recipes/clean_warmup_cache.py
    oomdoctor run recipes/clean_warmup_cache.py

Sequences come in four lengths; the causal averaging mask for each length is built once and kept
in a dict. Memory rises over the first four steps while the cache fills, then plateaus: steady
memory, not growth, so oomdoctor reports no finding.
"""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
embed = nn.Linear(16, 64)
head = nn.Linear(64, 10)
optimizer = torch.optim.SGD(list(embed.parameters()) + list(head.parameters()), lr=0.1)
masks = {}  # sequence length -> (length x length) causal averaging matrix


def causal_mask(length: int) -> torch.Tensor:
    if length not in masks:
        ones = torch.tril(torch.ones(length, length))
        masks[length] = ones / ones.sum(dim=1, keepdim=True)
    return masks[length]


for step in range(40):
    length = (64, 128, 192, 256)[step % 4]
    x = torch.randn(8, length, 16)
    y = torch.randint(0, 10, (8,))
    h = causal_mask(length) @ embed(x)  # each position averages the ones before it
    loss = F.cross_entropy(head(h[:, -1]), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

print(f"cached masks for lengths {sorted(masks)}, last loss {loss.item():.4f}")
