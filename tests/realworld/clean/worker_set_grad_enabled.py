# Pattern (pytorch-golden-template style worker classes): Trainer and Validator share one
# `WorkerTemplate.run()` loop; the validator's `_run_and_optimize_model()` calls `self.model(data)`
# and computes losses with no `no_grad` block of its own, after `model.eval()`. Grad mode is set by
# the base class, `with torch.set_grad_enabled(self.enable_grad)`, a property that is False for the
# Validator: the validation forward records nothing. Expected: no finding.
import time
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn


class WorkerTemplate(ABC):
    def __init__(self, pipeline, data_loader, step):
        for attr_name in ["model", "loss_functions"]:
            setattr(self, attr_name, getattr(pipeline, attr_name))
        self.data_loader = data_loader
        self.step = step

    @property
    @abstractmethod
    def enable_grad(self):
        pass

    @abstractmethod
    def _run_and_optimize_model(self, data):
        return {}, None

    @abstractmethod
    def _setup_model(self):
        pass

    def _get_and_write_losses(self, data, model_output):
        losses = {}
        for nickname, loss_function in self.loss_functions.items():
            losses[nickname] = loss_function(model_output["logits"], data["target"])
        total_loss = torch.stack(list(losses.values()), dim=0).sum(dim=0)
        return losses, total_loss

    def _iter_data(self, epoch):
        start, total_loss = time.time(), 0.0
        for batch_idx, data in enumerate(self.data_loader):
            model_output, loss = self._run_and_optimize_model(data)
            total_loss += loss.item()
            self.step += 1
        return {"avg_loss": total_loss / len(self.data_loader), "elapsed_time (s)": time.time() - start}

    def run(self, epoch):
        self._setup_model()
        with torch.set_grad_enabled(self.enable_grad):
            epoch_output = self._iter_data(epoch)
        return epoch_output


class Trainer(WorkerTemplate):
    def __init__(self, pipeline, *args):
        super().__init__(pipeline, *args)
        self.optimizer = pipeline.optimizer

    @property
    def enable_grad(self):
        return True

    def _run_and_optimize_model(self, data):
        self.optimizer.zero_grad()
        model_output = self.model(data)
        losses, total_loss = self._get_and_write_losses(data, model_output)
        total_loss.backward()
        self.optimizer.step()
        return model_output, total_loss

    def _setup_model(self):
        self.model.train()


class Validator(WorkerTemplate):
    @property
    def enable_grad(self):
        return False

    def _run_and_optimize_model(self, data):
        model_output = self.model(data)
        losses, total_loss = self._get_and_write_losses(data, model_output)
        return model_output, total_loss

    def _setup_model(self):
        self.model.eval()


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, data):
        return {"logits": self.net(data["data_input"])}


class Pipeline:
    def __init__(self):
        self.model = Model()
        self.loss_functions = {"cross_entropy": F.cross_entropy}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)


def make_loader(n_batches):
    return [{"data_input": torch.randn(64, 32), "target": torch.randint(0, 10, (64,))} for _ in range(n_batches)]


torch.manual_seed(0)
pipeline = Pipeline()
trainer = Trainer(pipeline, make_loader(10), 0)
validator = Validator(pipeline, make_loader(6), 0)
for epoch in range(5):
    train_log = trainer.run(epoch)
    valid_log = validator.run(epoch)
print(f"train loss {train_log['avg_loss']:.3f}, valid loss {valid_log['avg_loss']:.3f}")
