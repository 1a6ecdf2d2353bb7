# Source: https://github.com/lucidrains/rotary-embedding-torch/issues/15 ("Model hangs on eval"; fixed in commit
# f3dc708 "address .../issues/15")
# Bug: `RotaryEmbedding` (rotary-embedding-torch 0.4.0) memoizes the rotation frequencies in a plain
# dict keyed by `f'freqs:{seq_len}|offset:{offset}'`. An encoder-decoder transformer using it in
# its self-attention sees a new length with nearly every padded training batch and with every step
# of greedy decoding, so every new length adds an entry that is never dropped; the reporter's
# evaluation slowed down and hung after ~7 epochs. The maintainer: "i'm incorrectly caching by the
# sequence length, but it should cache the longest sequence length and slice out any subsequent
# calls with shorter ones".
# Fix (the commit): keep one `cached_freqs` buffer for the longest length seen and slice it.
# Expected finding: memory-growth at `self.cache[cache_key] = freqs`.
import random

import torch
import torch.nn.functional as F
from torch import nn


def exists(val):
    return val is not None


def default(val, d):
    return val if exists(val) else d


def rotate_half(x):
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary_emb(freqs, t, start_index=0, scale=1., seq_dim=-2):
    if t.ndim == 3:
        seq_len = t.shape[seq_dim]
        freqs = freqs[-seq_len:].to(t)
    rot_dim = freqs.shape[-1]
    end_index = start_index + rot_dim
    t_left, t, t_right = t[..., :start_index], t[..., start_index:end_index], t[..., end_index:]
    t = (t * freqs.cos() * scale) + (rotate_half(t) * freqs.sin() * scale)
    return torch.cat((t_left, t, t_right), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, theta=10000, learned_freq=False, interpolate_factor=1.):
        super().__init__()
        freqs = 1. / (theta ** (torch.arange(0, dim, 2)[:(dim // 2)].float() / dim))
        self.cache = dict()
        self.cache_scale = dict()
        self.freqs = nn.Parameter(freqs, requires_grad=learned_freq)
        self.learned_freq = learned_freq
        self.register_buffer('dummy', torch.tensor(0), persistent=False)
        self.default_seq_dim = -2
        self.interpolate_factor = interpolate_factor

    def get_seq_pos(self, seq_len, device, dtype, offset=0):
        return (torch.arange(seq_len, device=device, dtype=dtype) + offset) / self.interpolate_factor

    def rotate_queries_or_keys(self, t, seq_dim=None, offset=0, freq_seq_len=None):
        seq_dim = default(seq_dim, self.default_seq_dim)
        device, dtype, seq_len = t.device, t.dtype, t.shape[seq_dim]
        if exists(freq_seq_len):
            seq_len = freq_seq_len
        freqs = self.forward(lambda: self.get_seq_pos(seq_len, device=device, dtype=dtype, offset=offset),
                             cache_key=f'freqs:{seq_len}|offset:{offset}')
        return apply_rotary_emb(freqs, t, seq_dim=seq_dim)

    def forward(self, t, cache_key=None):
        should_cache = not self.learned_freq and exists(cache_key)
        if should_cache and cache_key in self.cache:
            return self.cache[cache_key]
        if callable(t):
            t = t()
        freqs = self.freqs
        freqs = torch.einsum('..., f -> ... f', t.type(freqs.dtype), freqs)
        freqs = freqs.repeat_interleave(2, dim=-1)
        if should_cache:
            self.cache[cache_key] = freqs  # EXPECT: memory-growth
        return freqs


class Attention(nn.Module):
    def __init__(self, dim, heads, rotary=None, causal=False):
        super().__init__()
        self.heads, self.rotary, self.causal = heads, rotary, causal
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context=None, key_padding_mask=None):
        context = default(context, x)
        b, n, d = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = (t.view(b, context.shape[1], self.heads, -1).transpose(1, 2) for t in self.to_kv(context).chunk(2, -1))
        if exists(self.rotary):
            q = self.rotary.rotate_queries_or_keys(q)
            k = self.rotary.rotate_queries_or_keys(k)
        mask = None
        if exists(key_padding_mask):
            mask = ~key_padding_mask[:, None, None, :]
        if self.causal:
            causal = torch.ones(n, context.shape[1], dtype=torch.bool).tril()
            mask = causal if mask is None else mask & causal
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim, heads, rotary=None, causal=False, cross=False):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, rotary, causal)
        self.cross = Attention(dim, heads) if cross else None
        self.norm2 = nn.LayerNorm(dim) if cross else None
        self.norm3, self.ff = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, pad=None, memory=None, memory_pad=None):
        x = x + self.attn(self.norm1(x), key_padding_mask=pad)
        if exists(self.cross):
            x = x + self.cross(self.norm2(x), context=memory, key_padding_mask=memory_pad)
        return x + self.ff(self.norm3(x))


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder with rotary embeddings in the first self-attention layer of each stack."""

    def __init__(self, vocab, dim=64, heads=4, depth=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        rotary = RotaryEmbedding(dim // heads)
        self.encoder = nn.ModuleList([Block(dim, heads, rotary if i == 0 else None) for i in range(depth)])
        self.decoder = nn.ModuleList([Block(dim, heads, rotary if i == 0 else None, causal=True, cross=True)
                                      for i in range(depth)])
        self.to_logits = nn.Linear(dim, vocab)

    def encode(self, src):
        pad = src == PAD
        x = self.embed(src)
        for block in self.encoder:
            x = block(x, pad=pad)
        return x, pad

    def decode(self, tgt, memory, memory_pad):
        y = self.embed(tgt)
        for block in self.decoder:
            y = block(y, memory=memory, memory_pad=memory_pad)
        return self.to_logits(y)

    def forward(self, src, tgt):
        memory, memory_pad = self.encode(src)
        return self.decode(tgt, memory, memory_pad)

    @torch.no_grad()
    def generate(self, src, max_len):
        memory, memory_pad = self.encode(src)
        out = torch.full((src.shape[0], 1), BOS)
        for _ in range(max_len):
            next_token = self.decode(out, memory, memory_pad)[:, -1].argmax(-1)
            out = torch.cat([out, next_token[:, None]], 1)
            if (out == EOS).any(1).all():
                break
        return out[:, 1:]


PAD, BOS, EOS, VOCAB = 0, 1, 2, 16  # digits are tokens 3..12, '+' is 13


def make_batch(batch_size, max_terms):
    """Sums of random length ("312+45+7" -> "364"), padded to the batch's longest expression."""
    srcs, tgts = [], []
    n_terms = random.randint(2, max_terms)
    for _ in range(batch_size):
        terms = [random.randint(0, 999) for _ in range(n_terms)]
        expr = '+'.join(map(str, terms))
        srcs.append([13 if c == '+' else 3 + int(c) for c in expr])
        tgts.append([BOS] + [3 + int(c) for c in str(sum(terms))] + [EOS])
    pad_to = lambda seqs: torch.tensor([s + [PAD] * (max(map(len, seqs)) - len(s)) for s in seqs])
    return pad_to(srcs), pad_to(tgts)


random.seed(0)
torch.manual_seed(0)
model = Seq2SeqTransformer(VOCAB)
opt = torch.optim.Adam(model.parameters(), lr=3e-4)
for step in range(1, 41):
    model.train()
    src, tgt = make_batch(16, max_terms=40)
    logits = model(src, tgt[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt[:, 1:].reshape(-1), ignore_index=PAD)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 10 == 0:
        model.eval()
        val_src, val_tgt = make_batch(32, max_terms=40)
        pred = model.generate(val_src, max_len=2 * val_tgt.shape[1])
        n = min(pred.shape[1], val_tgt.shape[1] - 1)
        acc = (pred[:, :n] == val_tgt[:, 1:n + 1]).float().mean().item()
        print(f"step {step}: loss {loss.item():.3f}, val token acc {acc:.3f}")
