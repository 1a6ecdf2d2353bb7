# Pattern: GradNorm multi-task loss balancing (modelled on https://github.com/LucasBoTang/GradNorm/blob/6104a30f15ab1073cb15e0a1cf9246cd28fdf3b6/gradnorm.py)
# One forward gives a vector of task losses. `weighted_loss.backward(retain_graph=True)` keeps the
# graph because, right after, `torch.autograd.grad(weights[i]*loss[i], layer.parameters(),
# retain_graph=True, create_graph=True)` takes each task's gradient norm on the last shared layer
# through the same graph, and the GradNorm loss built from those norms is back-propagated (second
# order) into the task weights. The weights are then renormalised into a fresh leaf Parameter with a
# fresh Adam each step; weights and loss ratios are logged as NumPy copies. The original leaves the
# step's tensors bound until the next forward has run, and the retained graph still holds part of
# the forward activations then (the GradNorm backward does not reach all of them), so this version
# drops them at the end of the step. Expected: no finding.
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


class toyDataset(Dataset):
    """The paper's toy regression: T tasks sigma_i * tanh(x @ (B + eps_i))."""

    def __init__(self, num_data, dim_features, dim_labels, scalars):
        self.sigmas = np.array(scalars)
        self.B = np.random.normal(scale=10, size=(dim_features, dim_labels))
        self.epsilons = np.random.normal(scale=3.5, size=(len(self.sigmas), dim_features, dim_labels))
        self.x = np.random.uniform(0, 1, size=(num_data, dim_features))
        self.ys = np.stack([self.sigmas[i] * np.tanh(self.x @ (self.B + self.epsilons[i]))
                            for i in range(len(self.sigmas))], axis=1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, ind):
        return torch.FloatTensor(self.x[ind]), torch.FloatTensor(self.ys[ind])


class fcNet(nn.Module):
    def __init__(self, dim_features, dim_labels, n_tasks):
        super().__init__()
        self.fc1 = nn.Linear(dim_features, dim_labels)
        self.fc2 = nn.Linear(dim_labels, dim_labels)
        self.fc3 = nn.Linear(dim_labels, dim_labels)
        self.fc4 = nn.Linear(dim_labels, dim_labels)
        self.heads = nn.ModuleList([nn.Linear(dim_labels, dim_labels) for _ in range(n_tasks)])

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h))
        h = F.relu(self.fc3(h))
        h = F.relu(self.fc4(h))
        return torch.stack([head(h) for head in self.heads], axis=1)


class mtlNet(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.mse = nn.MSELoss()

    def forward(self, x, y):
        yp = self.net(x)
        return torch.stack([self.mse(y[:, i], yp[:, i]) for i in range(yp.shape[1])])


def gradNorm(net, layer, alpha, dataloader, num_epochs, lr1, lr2, log=False):
    if log:
        log_weights = []
        log_loss = []
    optimizer1 = torch.optim.Adam(net.parameters(), lr=lr1)
    iters = 0
    net.train()
    for epoch in range(num_epochs):
        for data in dataloader:
            # forward pass
            loss = net(*data)
            # initialization
            if iters == 0:
                weights = torch.nn.Parameter(torch.ones_like(loss))
                T = weights.sum().detach()  # sum of weights
                optimizer2 = torch.optim.Adam([weights], lr=lr2)
                l0 = loss.detach()  # L(0)
            # compute the weighted loss
            weighted_loss = weights @ loss
            optimizer1.zero_grad()
            # backward pass for weighted task loss
            weighted_loss.backward(retain_graph=True)
            # compute the L2 norm of the gradients for each task
            gw = []
            for i in range(len(loss)):
                dl = torch.autograd.grad(weights[i] * loss[i], layer.parameters(), retain_graph=True, create_graph=True)[0]
                gw.append(torch.norm(dl))
            gw = torch.stack(gw)
            # compute loss ratio per task and the relative inverse training rate per task
            loss_ratio = loss.detach() / l0
            rt = loss_ratio / loss_ratio.mean()
            gw_avg = gw.mean().detach()
            constant = (gw_avg * rt ** alpha).detach()
            gradnorm_loss = torch.abs(gw - constant).sum()
            optimizer2.zero_grad()
            # backward pass for GradNorm
            gradnorm_loss.backward()
            if log:
                log_weights.append(weights.detach().cpu().numpy().copy())
                log_loss.append(loss_ratio.detach().cpu().numpy().copy())
            optimizer1.step()
            optimizer2.step()
            # renormalize weights
            weights = (weights / weights.sum() * T).detach()
            weights = torch.nn.Parameter(weights)
            optimizer2 = torch.optim.Adam([weights], lr=lr2)
            iters += 1
            # not in the original: release the retained graph before the next forward
            del loss, weighted_loss, dl, gw, gradnorm_loss
    if log:
        return np.stack(log_weights), np.stack(log_loss)


np.random.seed(0)
torch.manual_seed(0)
dataset = toyDataset(num_data=640, dim_features=25, dim_labels=10, scalars=[1, 100])
dataloader = DataLoader(dataset, batch_size=64, shuffle=True)
mtlnet = mtlNet(fcNet(25, 10, 2))
log_weights, log_loss = gradNorm(net=mtlnet, layer=mtlnet.net.fc4, alpha=0.12, dataloader=dataloader,
                                 num_epochs=4, lr1=1e-3, lr2=1e-2, log=True)
print(f"{len(log_weights)} steps, final task weights {[round(float(w), 3) for w in log_weights[-1]]}, "
      f"loss ratios {[round(float(r), 3) for r in log_loss[-1]]}")
