# Pattern: stochastic weight averaging (modelled on https://pytorch.org/blog/pytorch-1.6-now-includes-stochastic-weight-averaging/)
# `torch.optim.swa_utils.AveragedModel` holds a second copy of the model (plus an `n_averaged`
# buffer) and is updated once per epoch after `swa_start` with `update_parameters(model)`; SWALR
# takes over from the cosine schedule. At the end `update_bn` runs the loader through the averaged
# model to recompute the BatchNorm statistics (forwards with no backward: it does this under
# no_grad itself), and the test predictions are made under no_grad (the blog's snippet calls
# `swa_model(test_input)` bare). The copy is made once; nothing grows. Expected: no finding.
import torch
import torch.nn as nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

torch.manual_seed(0)
true_w = torch.randn(20, 5)
loader = []
for _ in range(4):
    x = torch.randn(64, 20)
    loader.append((x, (x @ true_w).argmax(dim=1)))
test_input = torch.randn(128, 20)

model = nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 5))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
swa_model = AveragedModel(model)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12)
swa_start = 5
swa_scheduler = SWALR(optimizer, swa_lr=0.05)

for epoch in range(12):
    for input, target in loader:
        optimizer.zero_grad()
        loss_fn(model(input), target).backward()
        optimizer.step()
    if epoch > swa_start:
        swa_model.update_parameters(model)
        swa_scheduler.step()
    else:
        scheduler.step()

# Update bn statistics for the swa_model at the end
update_bn(((input,) for input, _ in loader), swa_model)
# Use swa_model to make predictions on test data
swa_model.eval()
with torch.no_grad():
    preds = swa_model(test_input)
print(f"averaged {int(swa_model.n_averaged)} models, predicted classes {preds.argmax(1).bincount(minlength=5).tolist()}")
