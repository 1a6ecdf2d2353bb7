# Source: https://github.com/facebookresearch/synsin/pull/20 (same bug: https://github.com/pytorch/pytorch/issues/20275)
# Bug: a custom normalization layer deep in the encoder keeps a running mean for inference in a
# buffer updated in place from the batch statistics, which carry the graph of the input: "extending
# the computation graph on each call to bn.forward()", ~7 MB/s leaked until training crashes.
# Only inner layers are involved; the root module's output graph is freed normally.
# Fix: update the stored statistics from `mean.detach()` (or under `torch.no_grad()`).
# Fixed twin: the stored mean is updated from the detached batch mean.
import torch
import torch.nn.functional as F
from torch import nn


class MeanOnlyBatchNorm(nn.Module):
    """Centers activations with the batch mean; keeps a running mean for evaluation."""

    def __init__(self, channels: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))

    def forward(self, x):
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            self.stored_mean[:] = self.stored_mean * (1 - self.momentum) + mean.detach() * self.momentum
        else:
            mean = self.stored_mean
        return x - mean.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ResNetBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = MeanOnlyBatchNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.norm1(self.conv1(x))))


class ResNetEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(ResNetBlock(16), ResNetBlock(16))
        self.out = nn.Conv2d(16, 3, 1)

    def forward(self, img):
        return self.out(self.blocks(self.stem(img)))


torch.manual_seed(0)
encoder = ResNetEncoder()
optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
for step in range(40):
    img = torch.rand(4, 3, 24, 24)
    loss = F.l1_loss(encoder(img), img)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"final reconstruction loss {loss.item():.4f}")
