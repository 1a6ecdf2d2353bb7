# Source: https://github.com/meta-pytorch/opacus/issues/176 ("torch.no_grad() creates memory leak
# because of forward hook"; fixed in pull request #180, "Do not store activations within torch.no_grad")
# Bug: `GradSampleModule` registers a forward hook that pushes each layer's input onto
# `module.activations`; the backward hook pops it to compute per-sample gradients. The hook only
# checks `module.training`, so an evaluation run under `torch.no_grad()` with the model still in
# training mode pushes activations that no backward will ever pop: "the forward hooks will save the
# activations and they will not be deleted", and memory grows with every evaluated batch.
# Fix: the hook also returns early when `not torch.is_grad_enabled()`.
# Expected finding: memory-growth at `module.activations.append(...)` in the forward hook.
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


def requires_grad(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def compute_linear_grad_sample(layer, A, B, batch_dim=0):
    gs = torch.einsum("n...i,n...j->nij", B, A)
    ret = {layer.weight: gs}
    if layer.bias is not None:
        ret[layer.bias] = torch.einsum("n...k->nk", B)
    return ret


class GradSampleModule(nn.Module):
    GRAD_SAMPLERS = {nn.Linear: compute_linear_grad_sample}

    def __init__(self, m: nn.Module, *, batch_first=True, loss_reduction="mean"):
        super().__init__()
        self._module = m
        self.hooks_enabled = False
        self.batch_first = batch_first
        self.loss_reduction = loss_reduction
        self.add_hooks(loss_reduction=loss_reduction, batch_first=batch_first)

    def forward(self, x):
        return self._module(x)

    def add_hooks(self, loss_reduction="mean", batch_first=True):
        self._module.autograd_grad_sample_hooks = []
        for module in self._module.modules():
            if type(module) in self.GRAD_SAMPLERS and requires_grad(module):
                self._module.autograd_grad_sample_hooks.append(
                    module.register_forward_hook(self.capture_activations_hook))
                self._module.autograd_grad_sample_hooks.append(
                    module.register_backward_hook(partial(
                        self.capture_backprops_hook, loss_reduction=loss_reduction, batch_first=batch_first)))
        self.enable_hooks()

    def enable_hooks(self):
        self.hooks_enabled = True

    def capture_activations_hook(self, module, forward_input, _forward_output):
        if not requires_grad(module) or not module.training:
            return

        if not self.hooks_enabled:
            return

        if not hasattr(module, "activations"):
            module.activations = []
        module.activations.append(forward_input[0].detach())  # EXPECT: memory-growth

    def capture_backprops_hook(self, module, _forward_input, forward_output, loss_reduction, batch_first):
        if not self.hooks_enabled:
            return

        backprops = forward_output[0].detach()
        activations, backprops = self.rearrange_grad_samples(module, backprops, loss_reduction, batch_first)
        grad_sampler_fn = self.GRAD_SAMPLERS[type(module)]
        grad_samples = grad_sampler_fn(module, activations, backprops)
        for param, gs in grad_samples.items():
            param.grad_sample = gs if getattr(param, "grad_sample", None) is None else param.grad_sample + gs

    def rearrange_grad_samples(self, module, backprops, loss_reduction, batch_first):
        if not hasattr(module, "activations"):
            raise ValueError(f"No activations detected for {type(module)}, run forward after add_hooks(model)")
        batch_dim = 0 if batch_first else 1
        A = module.activations.pop()
        n = A.shape[batch_dim]
        if loss_reduction == "mean":
            B = backprops * n
        elif loss_reduction == "sum":
            B = backprops
        else:
            raise ValueError(f"loss_reduction = {loss_reduction}. Only 'sum' and 'mean' losses are supported")
        return A, B


def dp_step(model, optimizer, max_grad_norm=1.0, noise_multiplier=1.1, batch_size=64):
    """What the privacy engine does at `optimizer.step()`: clip each sample's gradient, add noise."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_sample_norms = torch.stack([p.grad_sample.reshape(batch_size, -1).norm(2, dim=1) for p in params], dim=1)
    clip_factor = (max_grad_norm / (per_sample_norms.norm(2, dim=1) + 1e-6)).clamp(max=1.0)
    for p in params:
        summed = torch.einsum("i,i...->...", clip_factor, p.grad_sample)
        noise = torch.normal(0, noise_multiplier * max_grad_norm, size=summed.shape)
        p.grad = (summed + noise) / batch_size
        p.grad_sample = None
    optimizer.step()


torch.manual_seed(0)
model = GradSampleModule(nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                       nn.Linear(128, 10)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
train_x, train_y = torch.randn(256, 256), torch.randint(0, 10, (256,))
val_x, val_y = torch.randn(1024, 256), torch.randint(0, 10, (1024,))
for epoch in range(12):
    model.train()
    for i in range(0, 256, 64):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(train_x[i:i + 64]), train_y[i:i + 64])
        loss.backward()
        dp_step(model, optimizer)
    # evaluation: no_grad, but the model is left in training mode
    correct = 0
    with torch.no_grad():
        for i in range(0, 1024, 256):
            correct += (model(val_x[i:i + 256]).argmax(1) == val_y[i:i + 256]).sum().item()
print(f"epoch {epoch}: loss {loss.item():.4f}, val acc {correct / 1024:.3f}")
