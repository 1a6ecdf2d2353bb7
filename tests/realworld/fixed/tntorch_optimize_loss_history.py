# Source: https://github.com/rballester/tntorch/pull/19 ("There was a dangerous memory leak in
# loss_history. Every added loss used to be a full computational graph, and in 1000 iterations it
# frozen a PC with 12Gb RAM while fitting a 100x100 picture")
# Bug: `tn.optimize` appends each iteration's total loss, `reduce(lambda x, y: x + y, loss)`, to
# `losses` for its stopping criterion, then back-propagates `losses[-1]` with `retain_graph=True`:
# the history holds every iteration's graph with its saved tensors.
# Fix (commit 67f8679): back-propagate `total_loss` first, then `losses.append(total_loss.detach())`.
# Fixed twin: the commit's version, which stores `total_loss.detach()`.
import time

import torch


def optimize(tensors, loss_function, optimizer=torch.optim.Adam, tol=1e-4, max_iter=1e4, print_freq=500, verbose=True):
    """
    High-level wrapper for iterative learning.

    Default stopping criterion: either the absolute (or relative) loss improvement must fall below `tol`.
    In addition, the rate loss improvement must be slowing down.
    """

    if not isinstance(tensors, (list, tuple)):
        tensors = [tensors]
    parameters = []
    for t in tensors:
        if t.requires_grad:
            parameters.append(t)
    if len(parameters) == 0:
        raise ValueError("There are no parameters to optimize. Did you forget a requires_grad=True somewhere?")

    optimizer = optimizer(parameters)
    losses = []
    converged = False
    start = time.time()
    iter = 0
    while True:
        optimizer.zero_grad()
        loss = loss_function(*tensors)
        if not isinstance(loss, (tuple, list)):
            loss = [loss]
        total_loss = sum(loss)
        total_loss.backward(retain_graph=True)
        optimizer.step()

        losses.append(total_loss.detach())
        if len(losses) >= 2:
            delta_loss = (losses[-1] - losses[-2])
        else:
            delta_loss = float('-inf')
        if iter >= 2 and tol is not None and (losses[-1] <= tol or -delta_loss / losses[-1] <= tol) and losses[-2] - \
                losses[-1] < losses[-3] - losses[-2]:
            converged = True
            break
        if iter == max_iter:
            break
        if verbose and iter % print_freq == 0:
            print('iter: {: <{}} | loss: '.format(iter, len('{}'.format(max_iter))), end='')
            print(' + '.join(['{:10.6f}'.format(l.item()) for l in loss]), end='')
            if len(loss) > 1:
                print(' = {:10.4}'.format(losses[-1].item()), end='')
            print(' | total time: {:9.4f}'.format(time.time() - start))
        iter += 1
    if verbose:
        print('iter: {: <{}} | loss: '.format(iter, len('{}'.format(max_iter))), end='')
        print(' + '.join(['{:10.6f}'.format(l.item()) for l in loss]), end='')
        if len(loss) > 1:
            print(' = {:10.4}'.format(losses[-1].item()), end='')
        print(' | total time: {:9.4f}'.format(time.time() - start), end='')
        if converged:
            print(' <- converged (tol={})'.format(tol))
        else:
            print(' <- max_iter was reached: {}'.format(max_iter))


def relative_error(gt, approx):
    return torch.norm(gt - approx) / torch.norm(gt)


# Fit a rank-8 two-core tensor train (U @ V) to a 100x100 "picture", plus a smoothness penalty.
torch.manual_seed(0)
xs = torch.linspace(-1, 1, 100)
picture = torch.sin(4 * xs[:, None]) * torch.cos(3 * xs[None, :]) + 0.5 * torch.exp(-(xs[:, None] ** 2 + xs[None, :] ** 2) * 4)
U = torch.randn(100, 8, requires_grad=True)
V = torch.randn(8, 100, requires_grad=True)


def loss_function(U, V):
    approx = U @ V
    return relative_error(picture, approx) ** 2, 1e-4 * (approx[1:] - approx[:-1]).pow(2).mean()


optimize([U, V], loss_function, optimizer=lambda params: torch.optim.Adam(params, lr=1e-2), max_iter=60, print_freq=20)
