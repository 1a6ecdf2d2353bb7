# Source: https://github.com/Lightning-AI/pytorch-lightning/issues/1510 ("Memory (CPU and GPU)
# leaks during the 1st epoch")
# Bug: the training loop keeps every batch's outputs for `training_epoch_end`. They are detached,
# so no graph is kept, "but they (tensors) are still on the GPU after detach. So, in case of long
# epochs or huge outputs from the training step, the GPU memory will blow": memory grows with
# every step of the epoch. Fix: keep only what the epoch-end hook needs, as Python numbers.
# Expected finding: memory-growth at `outputs.append(...)`.
import torch
import torch.nn.functional as F
from torch import nn


class LitClassifier(nn.Module):
    def __init__(self, classes=200):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, classes))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, y), "logits": logits, "y": y}

    def training_epoch_end(self, outputs):
        correct = sum(int((o["logits"].argmax(1) == o["y"]).sum()) for o in outputs)
        return correct / sum(len(o["y"]) for o in outputs)


def run_epoch(model, optimizer, loader):
    outputs = []
    for batch_idx, batch in enumerate(loader):
        output = model.training_step(batch, batch_idx)
        optimizer.zero_grad()
        output["loss"].backward()
        optimizer.step()
        outputs.append({key: value.detach() for key, value in output.items()})  # EXPECT: memory-growth
    return model.training_epoch_end(outputs)


torch.manual_seed(0)
model = LitClassifier()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
loader = ((torch.randn(128, 64), torch.randint(0, 200, (128,))) for _ in range(40))
print(f"train accuracy {run_epoch(model, optimizer, loader):.3f}")
