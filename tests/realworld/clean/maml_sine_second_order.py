# Pattern: MAML sine regression, second order (modelled on https://github.com/pytorch/pytorch/blob/0d9e42a3ffebf1fe04164203f78d034e0715cb03/functorch/examples/maml_regression/evjang.py)
# A functional net over a list of raw leaf tensors. Per task, one inner SGD step with
# `torch.autograd.grad(loss, params, create_graph=True)` makes "fast" weights that carry the graph of
# the inner step; the query loss through them is averaged over the tasks and back-propagated once
# (through the inner gradients). The fast weights are local to `get_loss_for_task` and live only
# inside one meta-iteration; the loss history is kept as floats (the original appended
# `loss2.detach()`). The bounded 5-step test-time adaptation at the end only feeds a plot, so unlike
# the original (create_graph=True there, plot forward with grad) it takes first-order steps on
# detached copies and runs the plot forward under no_grad. Expected: no finding.
import math

import torch
from torch.nn import functional as F

torch.manual_seed(0)


def net(x, params):
    x = F.relu(F.linear(x, params[0], params[1]))
    x = F.relu(F.linear(x, params[2], params[3]))
    return F.linear(x, params[4], params[5])


params = [
    torch.empty(40, 1).uniform_(-1.0, 1.0).requires_grad_(),
    torch.zeros(40).requires_grad_(),
    torch.empty(40, 40).uniform_(-1.0 / math.sqrt(40), 1.0 / math.sqrt(40)).requires_grad_(),
    torch.zeros(40).requires_grad_(),
    torch.empty(1, 40).uniform_(-1.0 / math.sqrt(40), 1.0 / math.sqrt(40)).requires_grad_(),
    torch.zeros(1).requires_grad_(),
]
opt = torch.optim.Adam(params, lr=1e-3)
alpha, K, num_tasks = 0.1, 20, 4
losses = []


def sample_tasks(outer_batch_size, inner_batch_size):
    As = torch.empty(outer_batch_size).uniform_(0.1, 0.5)
    phases = torch.empty(outer_batch_size).uniform_(0.0, math.pi)

    def get_batch():
        x = torch.empty(outer_batch_size, inner_batch_size, 1).uniform_(-5.0, 5.0)
        return x, As.view(-1, 1, 1) * torch.sin(x + phases.view(-1, 1, 1))

    x1, y1 = get_batch()
    x2, y2 = get_batch()
    return x1, y1, x2, y2


for it in range(40):
    opt.zero_grad()

    def get_loss_for_task(x1, y1, x2, y2):
        loss = F.mse_loss(net(x1, params), y1)
        # create_graph=True: the inner SGD step is part of the forward pass of the meta-loss.
        grads = torch.autograd.grad(loss, params, create_graph=True)
        new_params = [params[i] - alpha * grads[i] for i in range(len(params))]
        return F.mse_loss(net(x2, new_params), y2)

    task = sample_tasks(num_tasks, K)
    inner_losses = [get_loss_for_task(task[0][i], task[1][i], task[2][i], task[3][i]) for i in range(num_tasks)]
    loss2 = sum(inner_losses) / len(inner_losses)
    loss2.backward()
    opt.step()
    if it % 20 == 0:
        print("Iteration %d -- Outer Loss: %.4f" % (it, loss2.item()))
    losses.append(loss2.item())

# Test-time adaptation: 5 differentiable SGD steps from the meta-learned init, then a plot forward.
t_A = torch.tensor(0.0).uniform_(0.1, 0.5)
t_b = torch.tensor(0.0).uniform_(0.0, math.pi)
t_x = torch.empty(4, 1).uniform_(-5, 5)
t_y = t_A * torch.sin(t_x + t_b)
t_params = params
for k in range(5):
    t_loss = F.l1_loss(net(t_x, t_params), t_y)
    grads = torch.autograd.grad(t_loss, t_params)
    t_params = [(t_params[i] - alpha * grads[i]).detach().requires_grad_() for i in range(len(params))]
with torch.no_grad():
    test_x = torch.arange(-2 * math.pi, 2 * math.pi, step=0.01).unsqueeze(1)
    test_f = net(test_x, t_params)
print(f"final meta loss {losses[-1]:.4f}, adapted test mean {test_f.mean().item():.4f}")
