# Source: https://github.com/deepmodeling/Uni-Mol/issues/173 (logging_output leaks host memory)
# Bug: a custom loss class returns `logging_output = {"loss": loss}`, and the training loop keeps
# the logging outputs for the epoch's report in a list captured by a closure: host memory rises
# with every update ("without .data, the reduce_metrics inputs carry a grad_fn").
# The holder is a closure's cell, not a name any frame can see.
# Fix (the reporter's): `"loss": loss.data`.
# Expected finding: retained-graph at `records.append(logging_output)`.
import torch
import torch.nn.functional as F
from torch import nn


def make_epoch_logger():
    records = []

    def record(logging_output):
        records.append(logging_output)  # EXPECT: retained-graph

    def reduce():
        total = sum(r["sample_size"] for r in records)
        return sum(float(r["loss"]) for r in records) / total

    return record, reduce


class MolPropertyLoss:
    def __call__(self, model, sample, reduce=True):
        pred = model(sample["atoms"]).mean(dim=1).squeeze(-1)
        loss = F.mse_loss(pred, sample["target"], reduction="sum")
        sample_size = sample["target"].size(0)
        logging_output = {"loss": loss, "sample_size": sample_size, "bsz": sample_size}
        return loss, sample_size, logging_output


torch.manual_seed(0)
model = nn.Sequential(nn.Embedding(30, 32), nn.Linear(32, 64), nn.SiLU(), nn.Linear(64, 1))
loss_fn = MolPropertyLoss()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
record, reduce_epoch = make_epoch_logger()
for update in range(40):
    sample = {"atoms": torch.randint(0, 30, (16, 24)), "target": torch.randn(16)}
    loss, sample_size, logging_output = loss_fn(model, sample)
    optimizer.zero_grad()
    (loss / sample_size).backward()
    optimizer.step()
    record(logging_output)
print(f"epoch loss {reduce_epoch():.4f}")
