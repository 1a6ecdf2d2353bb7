# Source: https://github.com/sktime/pytorch-forecasting/pull/1924 (issues #1369, #1461)
# Bug: `BaseModel.training_step` appends its log dict, which holds the loss with its graph, to
# `self.training_step_outputs` for the epoch-end hook: "retaining the computation graph for
# every batch throughout an entire epoch".
# Fix: detach the tensors of the log dict before appending it.
# Fixed twin: the log dict is detached before it is kept.
import torch
import torch.nn.functional as F
from torch import nn


class BaseModel(nn.Module):
    def __init__(self, context=24, horizon=6):
        super().__init__()
        self.network = nn.Sequential(nn.Linear(context, 64), nn.ReLU(), nn.Linear(64, horizon))
        self.training_step_outputs = []

    def step(self, x, y, batch_idx):
        prediction = self.network(x["encoder_target"])
        loss = F.l1_loss(prediction, y)
        return {"loss": loss, "n_samples": x["encoder_target"].size(0)}, prediction

    def training_step(self, batch, batch_idx):
        x, y = batch
        log, out = self.step(x, y, batch_idx)
        self.training_step_outputs.append({k: v.detach() if torch.is_tensor(v) else v for k, v in log.items()})
        return log

    def on_train_epoch_end(self):
        total = sum(o["n_samples"] for o in self.training_step_outputs)
        mean = sum(float(o["loss"]) * o["n_samples"] for o in self.training_step_outputs) / total
        self.training_step_outputs.clear()
        return mean


def series_batches(n, batch_size=16):
    for _ in range(n):
        series = torch.randn(batch_size, 30).cumsum(dim=1)
        yield {"encoder_target": series[:, :24]}, series[:, 24:]


torch.manual_seed(0)
model = BaseModel()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(2):
    for batch_idx, batch in enumerate(series_batches(20)):
        log = model.training_step(batch, batch_idx)
        optimizer.zero_grad()
        log["loss"].backward()
        optimizer.step()
    print(f"epoch {epoch}: train loss {model.on_train_epoch_end():.4f}")
