# Source: https://github.com/StanfordASL/neural-network-lyapunov/pull/140
# Bug: no nn.Module at all: the Lyapunov network is a handful of raw tensors with
# `requires_grad=True`, trained through an optimizer closure that back-propagates with
# `retain_graph=True` and records `losses.append(loss)`: every evaluation's graph stays alive.
# Fix (the PR: "closure should return only loss, and losses list only stores the float value"):
# `losses.append(loss.item())` and a plain `loss.backward()`.
# Expected finding: retained-graph at `losses.append(loss)`.
import torch

torch.manual_seed(0)
nx, hidden = 2, 16
W1 = (0.5 * torch.randn(hidden, nx)).requires_grad_(True)
b1 = torch.zeros(hidden, requires_grad=True)
W2 = (0.5 * torch.randn(1, hidden)).requires_grad_(True)
A = torch.tensor([[0.9, 0.2], [-0.1, 0.8]])  # closed-loop dynamics x+ = A x


def lyapunov_value(x):
    phi = torch.relu(x @ W1.T + b1) @ W2.T
    phi0 = torch.relu(b1) @ W2.T
    return (phi - phi0).squeeze(-1) + 0.1 * x.abs().sum(dim=1)


def lyapunov_loss(x):
    positivity = torch.relu(0.01 * x.abs().sum(dim=1) - lyapunov_value(x)).mean()
    derivative = torch.relu(lyapunov_value(x @ A.T) - lyapunov_value(x) + 0.01 * x.abs().sum(dim=1)).mean()
    return positivity + derivative


optimizer = torch.optim.SGD([W1, b1, W2], lr=0.05)
losses = []
for iter_count in range(40):
    samples = 4 * torch.rand(256, nx) - 2

    def closure():
        optimizer.zero_grad()
        loss = lyapunov_loss(samples)
        loss.backward(retain_graph=True)
        losses.append(loss)  # EXPECT: retained-graph
        return loss

    optimizer.step(closure)
print(f"iter {iter_count}: loss {losses[-1]:.5f}")
