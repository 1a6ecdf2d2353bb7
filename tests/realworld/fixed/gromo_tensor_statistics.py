# Source: https://github.com/growingnet/gromo/issues/137 (fixed in pull request #138)
# Bug: a growing layer stores its input from a forward hook and accumulates second-order
# statistics of it (`S += x^T x`) across batches to decide how to grow; "the updates of the
# tensors have requires_grad = True, which causes the additions to be retained in the
# computational graph": the statistic chains every batch's graph of the layers below.
# Fix (the PR): the update runs under `torch.no_grad()` (a decorator on `update`).
# Fixed twin: the statistic is updated under no_grad.
import torch
import torch.nn.functional as F
from torch import nn


class TensorStatistic:
    """A running sum of a tensor statistic over the samples seen."""

    def __init__(self, update_function):
        self._update_function = update_function
        self._tensor = None
        self.samples = 0
        self.updated = True

    @torch.no_grad()
    def update(self, **kwargs):
        if self.updated is False:
            update, nb_sample = self._update_function(**kwargs)
            if self._tensor is None:
                self._tensor = update
            else:
                self._tensor += update
            self.samples += nb_sample
            self.updated = True

    def __call__(self):
        return self._tensor / max(self.samples, 1)


class LinearGrowingModule(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.layer = nn.Linear(in_features, out_features)
        self.store_input = True
        self._input = None
        self.tensor_s = TensorStatistic(self.compute_s_update)
        self.layer.register_forward_hook(self._save_input)

    def _save_input(self, module, input, output):
        if self.store_input:
            self._input = input[0]
            self.tensor_s.updated = False

    def compute_s_update(self):
        return torch.einsum("ij,ik->jk", self._input, self._input), self._input.shape[0]

    def forward(self, x):
        return self.layer(x)


torch.manual_seed(0)
first = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
growing = LinearGrowingModule(64, 10)
model = nn.Sequential(first, growing)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for step in range(40):
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    growing.tensor_s.update()
print(f"trace of S {growing.tensor_s().trace().item():.2f}")
