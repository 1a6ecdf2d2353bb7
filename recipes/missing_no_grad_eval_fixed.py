"""Fixed twin of missing_no_grad_eval.py: the validation loop runs under `torch.no_grad()`.

    python recipes/missing_no_grad_eval_fixed.py
    oomdoctor run recipes/missing_no_grad_eval_fixed.py

Under no_grad no forward records a graph: activations are freed as soon as each layer is done and
the kept logits are plain tensors. oomdoctor reports no finding.
"""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
val_batches = [(torch.randn(64, 64), torch.randint(0, 10, (64,))) for _ in range(8)]


def evaluate(model: nn.Module, batches) -> float:
    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            all_logits.append(logits)
            all_labels.append(y)
    model.train()
    predictions = torch.cat(all_logits).argmax(dim=1)
    return (predictions == torch.cat(all_labels)).float().mean().item()


for step in range(40):
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if (step + 1) % 10 == 0:
        print(f"step {step + 1}: validation accuracy {evaluate(model, val_batches):.3f}")
