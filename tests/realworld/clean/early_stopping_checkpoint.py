# Pattern: early stopping with a patience counter (modelled on https://github.com/Bjarten/early-stopping-pytorch/blob/5102fa5a5b61d972d465546906f09cf34ed10cf6/MNIST_Early_Stopping_example.ipynb)
# `EarlyStopping` (the repo's early_stopping_pytorch/early_stopping.py) keeps `best_val_loss` (a
# NumPy float: the epoch average of `loss.item()`s) and a counter, and on every improvement writes `model.state_dict()` to a checkpoint file with
# `torch.save`; the best weights are loaded back at the end. Per-batch losses go to lists that
# are rebound to `[]` every epoch; per-epoch averages are floats. The notebook's validation loop
# runs the model after `model.eval()` with grad enabled (a graph built and never used every batch);
# here it is under `torch.no_grad()`, as it should be. Expected: no finding.
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class EarlyStopping:
    """Early stops the training if validation loss doesn't improve after a given patience."""

    def __init__(self, patience=7, verbose=False, delta=0, path="checkpoint.pt", trace_func=print):
        self.patience = patience
        self.verbose = verbose
        self.counter = 0
        self.best_val_loss = None
        self.early_stop = False
        self.val_loss_min = np.inf
        self.delta = delta
        self.path = path
        self.trace_func = trace_func

    def __call__(self, val_loss, model):
        if np.isnan(val_loss):
            self.trace_func("Validation loss is NaN. Ignoring this epoch.")
            return
        if self.best_val_loss is None:
            self.best_val_loss = val_loss
            self.save_checkpoint(val_loss, model)
        elif val_loss < self.best_val_loss - self.delta:
            self.best_val_loss = val_loss
            self.save_checkpoint(val_loss, model)
            self.counter = 0
        else:
            self.counter += 1
            self.trace_func(f"EarlyStopping counter: {self.counter} out of {self.patience}")
            if self.counter >= self.patience:
                self.early_stop = True

    def save_checkpoint(self, val_loss, model):
        if self.verbose:
            self.trace_func(f"Validation loss decreased ({self.val_loss_min:.6f} --> {val_loss:.6f}).  Saving model ...")
        torch.save(model.state_dict(), self.path)
        self.val_loss_min = val_loss


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 128)
        self.fc3 = nn.Linear(128, 10)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x = self.dropout(F.relu(self.fc1(x.view(-1, 64))))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.fc3(x)


torch.manual_seed(0)
proto = torch.randn(10, 64)


def make_batches(n, noise):
    out = []
    for _ in range(n):
        target = torch.randint(0, 10, (32,))
        out.append((proto[target] + noise * torch.randn(32, 64), target))
    return out


train_loader, valid_loader = make_batches(4, 5.0), make_batches(2, 5.0)
model = Net()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)


def train_model(model, patience, n_epochs, path):
    train_losses, valid_losses = [], []
    avg_train_losses, avg_valid_losses = [], []
    early_stopping = EarlyStopping(patience=patience, verbose=False, path=path)
    for epoch in range(1, n_epochs + 1):
        model.train()  # prep model for training
        for batch, (data, target) in enumerate(train_loader, 1):
            optimizer.zero_grad()
            output = model(data)
            loss = criterion(output, target)
            loss.backward()
            optimizer.step()
            train_losses.append(loss.item())
        model.eval()  # prep model for evaluation
        with torch.no_grad():
            for data, target in valid_loader:
                output = model(data)
                loss = criterion(output, target)
                valid_losses.append(loss.item())
        train_loss = np.average(train_losses)
        valid_loss = np.average(valid_losses)
        avg_train_losses.append(train_loss)
        avg_valid_losses.append(valid_loss)
        if epoch % 5 == 0:
            print(f"[{epoch:>2}/{n_epochs:>2}] train_loss: {train_loss:.5f} valid_loss: {valid_loss:.5f}")
        # clear lists to track next epoch
        train_losses = []
        valid_losses = []
        early_stopping(valid_loss, model)
        if early_stopping.early_stop:
            print("Early stopping")
            break
    # load the last checkpoint with the best model
    model.load_state_dict(torch.load(path))
    return model, avg_train_losses, avg_valid_losses


with tempfile.TemporaryDirectory() as tmp:
    model, train_loss, valid_loss = train_model(model, patience=3, n_epochs=30, path=os.path.join(tmp, "checkpoint.pt"))
print(f"best valid loss {min(valid_loss):.5f}, stopped after {len(valid_loss)} epochs")
