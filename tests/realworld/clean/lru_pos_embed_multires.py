# Pattern (multi-resolution ViT training): the 2D sin-cos position embedding of each patch grid is
# memoized with `functools.lru_cache(maxsize=4)`. The grid changes at almost every step, so a new
# embedding is built and cached each step - but the LRU evicts the oldest, and the cache never holds
# more than 4 embeddings: memory is flat after the first steps. Expected: no finding.
import functools
import random

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=4)
def get_2d_sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float32) / (embed_dim / 4))
    y, x = torch.meshgrid(torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32),
                          indexing="ij")
    out_y = y.reshape(-1, 1) * omega[None, :]
    out_x = x.reshape(-1, 1) * omega[None, :]
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)


class PatchClassifier(nn.Module):
    def __init__(self, patch=8, embed_dim=64, num_classes=10):
        super().__init__()
        self.patch, self.embed_dim = patch, embed_dim
        self.patch_embed = nn.Conv2d(3, embed_dim, patch, stride=patch)
        self.mlp = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, 2 * embed_dim), nn.GELU(),
                                 nn.Linear(2 * embed_dim, embed_dim))
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images):
        tokens = self.patch_embed(images)
        grid_h, grid_w = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2) + get_2d_sincos_pos_embed(self.embed_dim, grid_h, grid_w)
        tokens = tokens + self.mlp(tokens)
        return self.head(tokens.mean(dim=1))


random.seed(0)
torch.manual_seed(0)
model = PatchClassifier()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for step in range(50):
    grid_h, grid_w = random.randint(8, 24), random.randint(8, 24)  # random resolution per batch
    images = torch.randn(8, 3, 8 * grid_h, 8 * grid_w)
    labels = torch.randint(0, 10, (8,))
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"pos-embed cache {get_2d_sincos_pos_embed.cache_info()}; loss {loss.item():.4f}")
