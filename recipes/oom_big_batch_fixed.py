"""The fix for `oom_big_batch.py`: micro-batches that fit, gradients accumulated over them.

    oomdoctor run --capacity 40MiB recipes/oom_big_batch_fixed.py --batch-size 2000 --accumulate 2

The effective batch stays 2000 (1000 × 2, as the `oom` finding recommends): each micro-batch's
loss is divided by the number of micro-batches, so the summed gradients are those of the whole
batch, and the optimizer steps once per effective batch.
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", type=int, default=512, help="the effective batch")
parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
args = parser.parse_args()
if args.batch_size % args.accumulate:
    parser.error("--accumulate must divide --batch-size")
micro = args.batch_size // args.accumulate

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

for step in range(5):
    optimizer.zero_grad()
    for _ in range(args.accumulate):
        x = torch.randn(micro, 256)
        loss = model(x).logsumexp(-1).mean()
        (loss / args.accumulate).backward()
    optimizer.step()
print("done")
