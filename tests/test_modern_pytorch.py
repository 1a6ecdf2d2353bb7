"""Modern PyTorch runs under oomdoctor exactly as under python: torch.compile compiles what it
compiles plainly (and is measured compiled), torch.func transforms run, and on steps the per-op
view does not watch oomdoctor's cost does not grow with the model.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import oomdoctor

COMPILED = """
import sys, torch
from torch import nn
from torch._dynamo.utils import counters
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
if sys.argv[1] == "module":
    forward = torch.compile(model, backend="aot_eager")
else:
    @torch.compile(backend="aot_eager")
    def forward(x):
        return model(x)
for _ in range(6):
    loss = forward(torch.randn(16, 32)).square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
print("frames", counters["frames"]["ok"], "breaks", sum(counters["graph_break"].values()))
"""

FUNC = """
import torch
from torch.func import grad, hessian, jacrev, vjp, vmap
def f(x):
    return (x.sin() ** 2).sum()
x = torch.randn(5)
model = torch.nn.Linear(5, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(4):
    g = grad(f)(x); _, pull = vjp(torch.sin, x); j = jacrev(torch.sin)(x); h = hessian(f)(x)
    v = vmap(torch.sin)(torch.randn(3, 5))
    loss = model(x).sum() + g.sum()
    opt.zero_grad(); loss.backward(); opt.step()
print("ok", tuple(g.shape), tuple(j.shape), tuple(h.shape), tuple(pull(torch.ones(5))[0].shape))
"""


def run(tmp_path, source: str, *args: str, oomdoctor_args: tuple[str, ...] | None = None):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    prefix = [sys.executable] if oomdoctor_args is None else [sys.executable, "-m", "oomdoctor", "run", *oomdoctor_args]
    return subprocess.run([*prefix, str(script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["module", "function"])
def test_torch_compile_compiles_the_same_frames_as_under_python(tmp_path, how):
    # GIVEN a training loop whose model (or loss function) is compiled
    plain = run(tmp_path, COMPILED, how)
    # WHEN it runs under oomdoctor, in the default mode (per-op view on the first steps) and exact
    default = run(tmp_path, COMPILED, how, oomdoctor_args=("--quiet",))
    exact = run(tmp_path, COMPILED, how, oomdoctor_args=("--quiet", "--exact"))
    # THEN dynamo compiled exactly what it compiles plainly, with no warning of ours on stderr
    assert plain.returncode == 0, plain.stderr
    assert default.stdout == plain.stdout, default.stderr
    assert exact.stdout == plain.stdout, exact.stderr
    assert "frames 1 breaks 0" in plain.stdout
    assert "UserWarning" not in default.stderr + exact.stderr


@pytest.mark.parametrize("mode", [(), ("--exact",)])
def test_torch_func_transforms_run_as_under_python(tmp_path, mode):
    plain = run(tmp_path, FUNC)
    watched = run(tmp_path, FUNC, oomdoctor_args=("--quiet", *mode))
    assert plain.returncode == 0, plain.stderr
    assert (watched.returncode, watched.stdout) == (0, plain.stdout), watched.stderr


def test_torch_func_inside_track():
    with oomdoctor.track(quiet=True, device="cpu") as session:
        g = torch.func.grad(lambda x: (x ** 2).sum())(torch.ones(3))
    assert torch.equal(g, torch.full((3,), 2.0))
    assert session.report().exit.code == 0


CHECKPOINTED = """
import json, sys, torch
import torch.utils.checkpoint as cp
from torch import nn
torch.manual_seed(0)
stem, head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 2)
n1, c1, n2, c2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1)
modules = nn.ModuleList([stem, n1, c1, n2, c2, head])
opt = torch.optim.SGD(modules.parameters(), lr=0.1)
def layer1(*xs): return c1(torch.relu(n1(torch.cat(xs, 1))))
def layer2(*xs): return c2(torch.relu(n2(torch.cat(xs, 1))))  # a dense block: it sees layer1's output
reentrant = sys.argv[1] == "reentrant"
for _ in range(12):
    x = stem(torch.randn(8, 3, 8, 8))
    a = cp.checkpoint(layer1, x, use_reentrant=reentrant)
    b = cp.checkpoint(layer2, x, a, use_reentrant=reentrant)
    loss = head(b.mean((2, 3))).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
print(round(loss.item(), 6))
"""


@pytest.mark.parametrize("kind", ["non-reentrant", "reentrant"])
@pytest.mark.parametrize("mode", [(), ("--exact",)])
def test_activation_checkpointing_runs_as_under_python_and_is_no_finding(tmp_path, kind, mode):
    # GIVEN a DenseNet-like loop whose layers are checkpointed (their forwards are recomputed
    # inside backward, and non-reentrant checkpointing allows each saved tensor one unpack)
    plain = run(tmp_path, CHECKPOINTED, kind)
    # WHEN it runs under oomdoctor
    watched = run(tmp_path, CHECKPOINTED, kind, oomdoctor_args=("--quiet", "--json", "r.json", *mode))
    # THEN it runs as under python (oomdoctor reading the graph's saved tensors used to unpack
    # them: CheckpointError at the first backward), and the recomputed forwards are no forward
    # "that no backward uses"
    assert plain.returncode == 0, plain.stderr
    assert (watched.returncode, watched.stdout) == (0, plain.stdout), watched.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["findings"] == [] and report["steps_total"] == 12


def deep_model(blocks: int) -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(blocks)])


def callbacks_per_unsampled_step(blocks: int) -> int:
    """Calls into oomdoctor during one step the per-op view does not watch (step 5)."""
    torch.manual_seed(0)
    model = deep_model(blocks)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    counts = []
    with oomdoctor.track(quiet=True, device="cpu") as session:
        for _ in range(7):
            counts.append(session.callbacks)
            loss = model(torch.randn(4, 8)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert not session.sampling or session.step_index not in (4, 5)
    return counts[6] - counts[5]


def test_an_unsampled_step_costs_the_same_few_callbacks_for_10_or_100_modules():
    # GIVEN models of 10 and of 100 blocks (20 and 200 module calls, hundreds of ops per step)
    small, large = callbacks_per_unsampled_step(10), callbacks_per_unsampled_step(100)
    # THEN a step outside the sampled ones calls oomdoctor a constant number of times: the
    # optimizer step (pre and post), the backward pass, and the root module's forward (pre and post)
    assert small == large == 5
