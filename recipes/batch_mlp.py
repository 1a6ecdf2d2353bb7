"""How large a batch fits? A small MLP trained on random data, its batch size a flag.

    oomdoctor batch --flag --batch-size --capacity 64MiB recipes/batch_mlp.py

oomdoctor runs the first two optimizer steps (the second one carries the momentum buffers SGD
creates lazily at the first) at a few batch sizes, each in a fresh process, fits the peak as
fixed + per_sample * batch, and confirms the largest size that fits. Here the fixed part is the
weights, their gradients and the momentum buffers; every sample adds its activations. It prints
the largest batch size, a recommendation with 10 % headroom and, since 1024 does not fit in
64 MiB, the gradient accumulation that keeps an effective batch of 1024.

The fix, when the recommendation is below the batch you want: `--batch-size` as recommended and
`--accumulate` as printed (the effective batch, batch_size * accumulate, stays the same).
"""
import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", type=int, default=1024)
parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--width", type=int, default=512)
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(
    nn.Linear(512, args.width), nn.ReLU(),
    nn.Linear(args.width, args.width), nn.ReLU(),
    nn.Linear(args.width, 10),
).to(args.device)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()

for step in range(args.steps):
    optimizer.zero_grad(set_to_none=True)
    for _ in range(args.accumulate):
        x = torch.randn(args.batch_size, 512, device=args.device)
        y = torch.randint(0, 10, (args.batch_size,), device=args.device)
        loss = loss_fn(model(x), y) / args.accumulate
        loss.backward()
    optimizer.step()

print(f"{args.steps} steps of {args.batch_size} x {args.accumulate} samples, last loss {loss.item():.4f}")
