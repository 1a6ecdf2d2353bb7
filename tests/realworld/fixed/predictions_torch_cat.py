# Source: https://github.com/pytorch/pytorch/issues/13613 ("GPU Memery leak": predictions gathered
# with `y_predlabel = torch.cat((y_predlabel, batch_y_predlabel.cpu()))`; the fix idea of
# https://github.com/CompOmics/DeepLC/pull/125: allocate the output once and fill it in place)
# Bug: an online-learning loop trains on each incoming batch and predicts the next one, regrowing
# one tensor of all predictions with `torch.cat` at every step: memory rises step after step
# (and each cat copies everything gathered so far) until the device runs out. No graph involved.
# Fix: allocate the prediction buffer once, for the whole stream, and fill slices of it.
# Fixed twin: one buffer allocated up front, filled in place.
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
steps, batch, classes = 40, 256, 50
model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, classes))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
y_predlabel = torch.empty(steps * batch, classes)
for step in range(steps):
    x, y = torch.randn(batch, 64), torch.randint(0, classes, (batch,))
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        batch_y_predlabel = model(torch.randn(batch, 64)).softmax(dim=1)
    y_predlabel[step * batch:(step + 1) * batch] = batch_y_predlabel.cpu()
print(f"gathered {tuple(y_predlabel.shape)}; mean max prob {y_predlabel.max(dim=1).values.mean():.3f}")
