# Source: https://github.com/skorch-dev/skorch/issues/218 (fixed in pull request #219)
# Bug: `validation_step()` calls the same `infer()` as `train_step()` but without `no_grad`: each
# validation batch builds a graph nobody back-propagates ("After each validation batch the GPU
# memory consumption increases until nothing is left"). The forward site inside `infer()` is
# back-propagated during training, so only the validation call is wrong.
# Fix: run validation_step's body under `torch.no_grad()` (skorch: `torch.set_grad_enabled(False)`).
# Fixed twin: validation_step runs under no_grad.
import torch
from torch import nn


class NeuralNet:
    def __init__(self, module, criterion, lr=0.05, batch_size=32, max_epochs=4):
        self.module_ = module
        self.criterion_ = criterion
        self.optimizer_ = torch.optim.SGD(self.module_.parameters(), lr=lr)
        self.batch_size, self.max_epochs = batch_size, max_epochs
        self.history = []

    def infer(self, x, **fit_params):
        return self.module_(x, **fit_params)

    def get_loss(self, y_pred, y_true, training=False):
        return self.criterion_(y_pred, y_true)

    def validation_step(self, Xi, yi, **fit_params):
        self.module_.eval()
        with torch.no_grad():
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, training=False)
        return {"loss": loss, "y_pred": y_pred}

    def train_step(self, Xi, yi, **fit_params):
        self.module_.train()
        self.optimizer_.zero_grad()
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, training=True)
        loss.backward()
        self.optimizer_.step()
        return {"loss": loss, "y_pred": y_pred}

    def get_iterator(self, X, y):
        for start in range(0, len(X), self.batch_size):
            yield X[start:start + self.batch_size], y[start:start + self.batch_size]

    def run_single_epoch(self, X, y, prefix, step_fn):
        losses = []
        for Xi, yi in self.get_iterator(X, y):
            step = step_fn(Xi, yi)
            losses.append(step["loss"].item())
        self.history.append({prefix + "_loss": sum(losses) / len(losses)})

    def fit(self, X, y, X_valid, y_valid):
        for epoch in range(self.max_epochs):
            self.run_single_epoch(X, y, "train", self.train_step)
            self.run_single_epoch(X_valid, y_valid, "valid", self.validation_step)
        return self


torch.manual_seed(0)
X, y = torch.randn(320, 20), torch.randint(0, 2, (320,))
X_valid, y_valid = torch.randn(128, 20), torch.randint(0, 2, (128,))
module = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 2))
net = NeuralNet(module, nn.CrossEntropyLoss()).fit(X, y, X_valid, y_valid)
print(net.history[-1])
