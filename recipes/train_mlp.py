"""A small, healthy training loop: the quick-start recipe.

    oomdoctor run recipes/train_mlp.py

oomdoctor reports one step per optimizer step, the peak and the step where it happened, and the
breakdown at the peak: parameters, gradients, Adam's two moments (optimizer state, created lazily
at the first step) and the activations saved for backward. No finding: this loop is clean.
"""
import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--width", type=int, default=512)
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(256, args.width), nn.GELU(),
    nn.Linear(args.width, args.width), nn.GELU(),
    nn.Linear(args.width, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()

running = 0.0
for step in range(args.steps):
    x = torch.randn(args.batch_size, 256)
    y = torch.randint(0, 10, (args.batch_size,))
    loss = loss_fn(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    running += loss.item()

print(f"mean loss {running / args.steps:.4f}")
