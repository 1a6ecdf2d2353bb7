"""Clean: training, with validation under `torch.inference_mode()`.

    python recipes/clean_eval_no_grad.py
    oomdoctor run recipes/clean_eval_no_grad.py

Validation forwards run in inference mode: no graph is recorded, activations are freed at once,
and keeping the logits for the accuracy keeps only their values. oomdoctor reports no finding.
"""
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loss_fn = nn.CrossEntropyLoss()
val_batches = [(torch.randn(64, 64), torch.randint(0, 10, (64,))) for _ in range(8)]


@torch.inference_mode()
def evaluate(model: nn.Module, batches) -> float:
    model.eval()
    all_logits = [model(x) for x, _ in batches]
    labels = torch.cat([y for _, y in batches])
    model.train()
    return (torch.cat(all_logits).argmax(dim=1) == labels).float().mean().item()


for step in range(40):
    x = torch.randn(32, 64)
    y = torch.randint(0, 10, (32,))
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if (step + 1) % 10 == 0:
        print(f"step {step + 1}: validation accuracy {evaluate(model, val_batches):.3f}")
