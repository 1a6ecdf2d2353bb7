# Source: https://github.com/CanReader/FastNN/issues/16 ("The causal mask cache grows without
# bound"; the same design in PyTorch code: https://github.com/facebookresearch/xformers/issues/655)
# Bug: the attention layer memoizes its causal mask in a dict keyed by (q_len, kv_len). Under a
# sequence-length warm-up every step has a new length, so every step mints a new mask that is
# kept for the life of the process: memory rises step after step.
# Fix: cache one mask for the longest length and slice the corner each step needs.
# Fixed twin: one mask for the longest length, sliced per step.
import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, dim=32, heads=4, max_len=256):
        super().__init__()
        self.max_len = max_len
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self._masks = {}

    def causal_mask(self, q_len, kv_len):
        if "full" not in self._masks:
            self._masks["full"] = torch.full((self.max_len, self.max_len), float("-inf")).triu(1)
        return self._masks["full"][kv_len - q_len:kv_len, :kv_len]

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.causal_mask(t, t))
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


torch.manual_seed(0)
attention, head = CausalSelfAttention(), nn.Linear(32, 32)
optimizer = torch.optim.Adam([*attention.parameters(), *head.parameters()], lr=1e-3)
for step in range(40):
    seq_len = 64 + 4 * step  # sequence-length warm-up
    x = torch.randn(2, seq_len, 32)
    loss = F.mse_loss(head(attention(x))[:, :-1], x[:, 1:])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"{len(attention._masks)} masks cached; loss {loss.item():.4f}")
