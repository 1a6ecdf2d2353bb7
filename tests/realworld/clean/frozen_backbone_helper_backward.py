# Pattern (linear probe / head fine-tuning on a frozen pretrained backbone): the backbone is frozen
# with `requires_grad_(False)` and kept in `eval()`; its forward runs without no_grad but records
# nothing (neither its parameters nor its input require grad). The whole model is also switched to
# `eval()` before each training forward (BatchNorm statistics frozen), and the head's loss is
# back-propagated a few lines later, inside a helper. Expected: no finding.
import torch
import torch.nn.functional as F
from torch import nn


class Probe(nn.Module):
    def __init__(self, backbone, num_classes=10):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        features = self.backbone(x)
        return self.head(features)


def compute_loss(model, batch):
    images, labels = batch
    logits = model(images)
    return F.cross_entropy(logits, labels), logits


def optimizer_step(loss, optimizer):
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


torch.manual_seed(0)
backbone = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
backbone.requires_grad_(False)
model = Probe(backbone)
optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3)
batches = [(torch.randn(32, 3, 24, 24), torch.randint(0, 10, (32,))) for _ in range(8)]
for epoch in range(4):
    model.eval()  # frozen BatchNorm statistics during fine-tuning
    for batch in batches:
        loss, logits = compute_loss(model, batch)
        last = optimizer_step(loss, optimizer)
    print(f"epoch {epoch}: loss {last:.3f}")
