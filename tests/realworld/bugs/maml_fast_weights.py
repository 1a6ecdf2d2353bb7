# Source: https://github.com/facebookresearch/higher/issues/6 ("Memory leak when performing inner
# loop on a copy": allocated memory 678 MB -> 1357 -> 12340 -> 23322 MB)
# Bug: a functional model (a list of weight tensors, no nn.Module forward) is adapted with
# differentiable SGD steps (`create_graph=True`), and the adapted "fast" weights are carried over
# from one meta-batch to the next instead of being reset from the meta-parameters: every meta
# step's graph is chained into the next, and each meta backward walks all of them (the meta
# update is done by hand on `p.data`, and `retain_graph=True` silences the second-backward error).
# Fix: start each meta-batch's inner loop from the meta-parameters (`fast_weights = list(params)`).
# Expected finding: retained-graph at the `fast_weights = [...]` update line.
import torch
import torch.nn.functional as F


def functional_mlp(x, weights):
    w1, b1, w2, b2 = weights
    return F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2)


torch.manual_seed(0)
params = [(0.3 * torch.randn(40, 1)).requires_grad_(), torch.zeros(40, requires_grad=True),
          (0.3 * torch.randn(1, 40)).requires_grad_(), torch.zeros(1, requires_grad=True)]
meta_lr, inner_lr, inner_steps = 1e-3, 0.01, 2
fast_weights = list(params)
for meta_step in range(40):
    amplitude, phase = 0.1 + 4.9 * torch.rand(1), 3.14 * torch.rand(1)
    x_support, x_query = 10 * torch.rand(10, 1) - 5, 10 * torch.rand(10, 1) - 5
    y_support, y_query = amplitude * torch.sin(x_support + phase), amplitude * torch.sin(x_query + phase)
    for _ in range(inner_steps):
        inner_loss = F.mse_loss(functional_mlp(x_support, fast_weights), y_support)
        grads = torch.autograd.grad(inner_loss, fast_weights, create_graph=True)
        fast_weights = [w - inner_lr * g for w, g in zip(fast_weights, grads)]  # EXPECT: retained-graph
    meta_loss = F.mse_loss(functional_mlp(x_query, fast_weights), y_query)
    meta_loss.backward(retain_graph=True)
    for p in params:
        p.data.add_(p.grad, alpha=-meta_lr)
        p.grad = None
print(f"meta loss {meta_loss.item():.4f}")
