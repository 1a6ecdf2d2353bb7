"""A batch too large for the device: the OOM post-mortem.

    oomdoctor run --capacity 40MiB recipes/oom_big_batch.py --batch-size 2000

The run dies with a (simulated) OutOfMemoryError in the backward pass of its first step (step 0).
oomdoctor reports an `oom` finding at the `loss.backward()` line with the phase, what was live by
category, and the fixes ranked by the memory they save: a batch size that fits with 10 % headroom
and the gradient-accumulation factor whose product keeps the effective batch (1000 × 2 = 2000), and
bf16 autocast and checkpointing shown on this script's own forward line. The fix:
`recipes/oom_big_batch_fixed.py`. On a GPU, drop `--capacity`.
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", type=int, default=512)
args = parser.parse_args()

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

for step in range(5):
    x = torch.randn(args.batch_size, 256)
    loss = model(x).logsumexp(-1).mean()
    optimizer.zero_grad()
    loss.backward()  # oomdoctor: oom
    optimizer.step()
print("done")
