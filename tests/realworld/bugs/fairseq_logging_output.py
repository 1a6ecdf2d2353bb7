# Source: https://github.com/facebookresearch/fairseq/issues/2255
# Bug: the masked-LM criterion puts the loss tensor itself in its `logging_output`
# (`'loss': loss`), and `reduce_metrics` feeds it to the global metrics registry, whose meters sum
# it across batches: host memory rises as training proceeds. The holder is
# `_aggregators['train']['loss'].sum` in another module.
# Fix (the fairseq commit): `'loss': loss.data` (or `loss.detach()`).
# Expected finding: retained-graph at `self.sum = self.sum + val * n` in _fairseq_metrics.py.
import math

import torch
import torch.nn.functional as F
from torch import nn

import _fairseq_metrics as metrics


class MaskedLmLoss:
    def __init__(self, padding_idx=0):
        self.padding_idx = padding_idx

    def __call__(self, model, sample):
        masked_tokens = sample["target"].ne(self.padding_idx)
        sample_size = int(masked_tokens.sum())
        logits = model(sample["net_input"])[masked_tokens]
        targets = sample["target"][masked_tokens]
        loss = F.cross_entropy(logits, targets, reduction="sum")
        logging_output = {
            "loss": loss,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        loss_sum = sum(log.get("loss", 0) for log in logging_outputs)
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)


torch.manual_seed(0)
vocab = 100
model = nn.Sequential(nn.Embedding(vocab, 32), nn.Linear(32, 64), nn.GELU(), nn.Linear(64, vocab))
criterion = MaskedLmLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for update in range(40):
    tokens = torch.randint(1, vocab, (8, 24))
    target = torch.where(torch.rand(8, 24) < 0.15, tokens, torch.zeros_like(tokens))
    sample = {"net_input": tokens, "target": target, "ntokens": tokens.numel()}
    loss, sample_size, logging_output = criterion(model, sample)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    MaskedLmLoss.reduce_metrics([logging_output])
print(metrics.get_smoothed_values("train"))
