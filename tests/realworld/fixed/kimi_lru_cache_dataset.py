# Source: https://github.com/MoonshotAI/Kimi-Audio/issues/117
# Bug: the fine-tuning dataset decorates `__getitem__` with `@lru_cache(maxsize=None)`: every
# sample ever loaded stays cached with its tensors, so memory grows with each new sample
# ("may cause memory leakage when training data grows larger").
# Fix: no cache on `__getitem__` (or a bounded one).
# Fixed twin: no cache on __getitem__.
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn


class LazySupervisedDataset:
    def __init__(self, num_samples: int, frames: int = 120, mel_bins: int = 80):
        self.num_samples, self.frames, self.mel_bins = num_samples, frames, mel_bins

    def __len__(self):
        return self.num_samples

    def __getitem__(self, i) -> Dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        whisper_feats = torch.randn(self.frames, self.mel_bins, generator=g)
        input_ids = torch.randint(0, 500, (self.frames // 4,), generator=g)
        return {"input_ids": input_ids, "whisper_input_feature": whisper_feats, "labels": input_ids.clone()}


class AudioAdapterLM(nn.Module):
    def __init__(self, mel_bins=80, dim=64, vocab=500):
        super().__init__()
        self.audio_proj = nn.Linear(mel_bins * 4, dim)
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, whisper_input_feature):
        audio = self.audio_proj(whisper_input_feature.reshape(whisper_input_feature.size(0), -1, 4 * whisper_input_feature.size(-1)))
        return self.head(audio + self.embed(input_ids))


def collate(samples):
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


torch.manual_seed(0)
dataset = LazySupervisedDataset(num_samples=160)
model = AudioAdapterLM()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for step in range(40):
    batch = collate([dataset[step * 4 + j] for j in range(4)])
    logits = model(batch["input_ids"], batch["whisper_input_feature"])
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.3f}")
