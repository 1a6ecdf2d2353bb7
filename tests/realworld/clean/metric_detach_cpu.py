# Pattern (torchmetrics / Lightning epoch outputs, done right): per-batch predictions kept for an
# epoch-level metric as `.detach().cpu()`, and the list cleared every epoch. Expected: no finding.
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(4):
    preds, labels = [], []
    for step in range(10):
        x = torch.randn(16, 20)
        y = torch.randint(0, 2, (16,))
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        preds.append(logits.softmax(dim=1)[:, 1].detach().cpu())
        labels.append(y.cpu())
    scores, truth = torch.cat(preds), torch.cat(labels)
    print(f"epoch {epoch}: mean score of positives {scores[truth == 1].mean():.3f}")
