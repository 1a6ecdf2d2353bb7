# Source: https://github.com/pnnl/neuromancer/pull/292 ("Fixing leaking autograd graph memory in Trainer")
# Bug: `Trainer.train` collects each batch's loss tensor in `losses`, then keeps
# `torch.mean(torch.stack(losses))` as the epoch loss in `self.loss_history["train"]`: "we're not
# detaching the grad graphs from the metrics before we store them", so every batch's graph of every
# epoch stays reachable from the history ("hundreds of MB or a few GB of autograd graph ... per long
# training run").
# Fix: store detached metrics, `losses.append(output[self.train_metric].detach())`.
# Expected finding: retained-graph at `losses.append(output[self.train_metric])`.
from copy import deepcopy

import numpy as np
import torch
from torch import nn


def move_batch_to_device(batch, device="cpu"):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class Callback:
    def begin_train(self, trainer): pass
    def end_batch(self, trainer, output): pass
    def begin_epoch(self, trainer, output): pass
    def begin_eval(self, trainer, output): pass
    def end_eval(self, trainer, output): pass
    def end_epoch(self, trainer, output): pass
    def end_train(self, trainer, output): pass


class Problem(nn.Module):
    """A stand-in for neuromancer.problem.Problem: an MLP surrogate of a damped oscillator step."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 2))
        self.grad_inference = False

    def forward(self, data):
        xnext = data["x"] + self.net(data["x"])
        loss = nn.functional.mse_loss(xnext, data["xnext"])
        return {**data, f"{data['name']}_loss": loss, "xnext_hat": xnext}


class Trainer:
    def __init__(self, problem, train_data, dev_data=None, optimizer=None, logger=None,
                 callback=Callback(), lr_scheduler=False, epochs=1000, epoch_verbose=1, patience=5,
                 warmup=0, train_metric="train_loss", dev_metric="dev_loss", eval_metric="dev_loss",
                 eval_mode="min", clip=100.0, device="cpu"):
        self.model = problem
        self.optimizer = optimizer if optimizer is not None else torch.optim.Adam(problem.parameters(), 0.01, betas=(0.0, 0.9))
        self.train_data = train_data
        self.dev_data = dev_data
        self.callback = callback
        self.logger = logger
        self.epochs = epochs
        self.current_epoch = 0
        self.epoch_verbose = epoch_verbose
        self.train_metric = train_metric
        self.dev_metric = dev_metric
        self.eval_metric = eval_metric
        self._eval_min = eval_mode == "min"
        self.lr_scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=0.5, patience=100)
            if lr_scheduler
            else None
        )
        self.patience = patience
        self.warmup = warmup
        self.badcount = 0
        self.clip = clip
        self.best_devloss = np.finfo(np.float32).max if self._eval_min else 0.
        self.best_model = deepcopy(self.model.state_dict())
        self.device = device
        self.loss_history = dict()
        self.loss_history["train"] = []
        self.loss_history["dev"] = []

    def train(self):
        self.callback.begin_train(self)
        for i in range(self.current_epoch, self.current_epoch + self.epochs):
            self.model.train()
            losses = []
            for t_batch in self.train_data:
                t_batch['epoch'] = i
                t_batch = move_batch_to_device(t_batch, self.device)
                output = self.model(t_batch)
                self.optimizer.zero_grad()
                output[self.train_metric].backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
                self.optimizer.step()
                losses.append(output[self.train_metric])  # EXPECT: retained-graph
                self.callback.end_batch(self, output)

            output[f'mean_{self.train_metric}'] = torch.mean(torch.stack(losses))
            self.callback.begin_epoch(self, output)

            if self.lr_scheduler is not None:
                self.lr_scheduler.step(output[f'mean_{self.train_metric}'])

            with torch.set_grad_enabled(self.model.grad_inference):
                self.model.eval()
                if self.dev_data is not None:
                    losses = []
                    for d_batch in self.dev_data:
                        d_batch = move_batch_to_device(d_batch, self.device)
                        eval_output = self.model(d_batch)
                        losses.append(eval_output[self.dev_metric])
                    mean_dev_loss = torch.mean(torch.stack(losses))
                    self.loss_history["dev"].append(mean_dev_loss)
                    eval_output[f'mean_{self.dev_metric}'] = mean_dev_loss
                    output = {**output, **eval_output}
                self.callback.begin_eval(self, output)  # Used for alternate dev evaluation

                if (self._eval_min and output[self.eval_metric] < self.best_devloss) \
                        or (not self._eval_min and output[self.eval_metric] > self.best_devloss):
                    self.best_model = deepcopy(self.model.state_dict())
                    self.best_devloss = output[self.eval_metric]
                    self.badcount = 0
                else:
                    if i > self.warmup:
                        self.badcount += 1
                if self.logger is not None:
                    self.logger.log_metrics(output, step=i)
                else:
                    mean_loss = output[f'mean_{self.train_metric}']
                    self.loss_history["train"].append(mean_loss)
                    if i % (self.epoch_verbose) == 0:
                        print(f'epoch: {i}  {self.train_metric}: {mean_loss}')

                self.callback.end_eval(self, output)  # visualizations
                self.callback.end_epoch(self, output)

                if self.badcount > self.patience:
                    print('Early stopping!!!')
                    break
            self.current_epoch = i + 1

        self.callback.end_train(self, output)
        return self.best_model


def make_batches(name, n_batches, batch_size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[0.99, 0.1], [-0.1, 0.98]])
    batches = []
    for _ in range(n_batches):
        x = torch.randn(batch_size, 2, generator=g)
        batches.append({"name": name, "x": x, "xnext": x @ A.T})
    return batches


torch.manual_seed(0)
problem = Problem()
trainer = Trainer(problem, make_batches("train", 5), make_batches("dev", 1, seed=1),
                  optimizer=torch.optim.Adam(problem.parameters(), lr=1e-3),
                  epochs=8, epoch_verbose=4, patience=100)
best_model = trainer.train()
print(f"best dev loss {float(trainer.best_devloss):.5f}")
