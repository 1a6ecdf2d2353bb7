"""Bug: a validation loop under `model.eval()` but without `torch.no_grad()`.

    python recipes/missing_no_grad_eval.py
    oomdoctor run recipes/missing_no_grad_eval.py
    oomdoctor lint recipes/missing_no_grad_eval.py

`model.eval()` changes how some layers behave (dropout, batch norm); it does not turn gradients
off. Each validation forward still records an autograd graph and keeps its activations for a
backward that never comes, and keeping the outputs for the accuracy keeps all of those graphs
alive until the end of the evaluation.

oomdoctor reports: missing-no-grad at line 31 (`logits = model(x)`), and retained-graph at
line 32 (`all_logits.append(logits)`), in evaluate.
Fix (missing_no_grad_eval_fixed.py): run the loop under `with torch.no_grad():` (or
`torch.inference_mode()`); nothing records a graph there, and both findings go away.
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
    for x, y in batches:
        logits = model(x)  # oomdoctor: missing-no-grad
        all_logits.append(logits)  # oomdoctor: retained-graph
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
