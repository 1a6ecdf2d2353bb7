"""`oomdoctor lint` on the shapes that made it wrong on real code (pytorch/examples, issue 15 point 8).

Each snippet is written for this test, in the style of the real program it stands for; marked lines
(`# oomdoctor: <kind>`) are exactly what lint must report, nothing else.
"""
from __future__ import annotations

import torch

from test_lint import TRAIN, check

GENERATOR = """\
import torch
from torch import nn
import torchvision.utils as vutils
netG = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
netD = nn.Linear(8, 1)
bce = nn.BCEWithLogitsLoss()
fixed_noise = torch.randn(16, 4)
"""


# -- retained-graph: what is not one --------------------------------------------------------------

def test_state_detached_in_place_before_it_is_fed_back_is_fine():
    # GIVEN an RNN trainer that cuts the graph with `hidden[i].detach_()` (distributed/rpc/rnn style)
    check(TRAIN + """
rnn = nn.LSTM(8, 16)
hidden = (torch.zeros(1, 4, 16), torch.zeros(1, 4, 16))
for x, y in loader:
    hidden[0].detach_()
    hidden[1].detach_()
    output, hidden = rnn(x, hidden)
    loss = criterion(output[-1], y)
    loss.backward()
    optimizer.step()
""")


def test_a_state_fed_back_is_detached_before_the_call_tensor_tuple_or_none():
    [f] = check(TRAIN + """
rnn = nn.LSTM(8, 16)
state = None
for x, y in loader:
    out, state = rnn(x, state)  # oomdoctor: retained-graph
    loss = criterion(out[-1], y)
    loss.backward()
    optimizer.step()
""")
    assert f.after.endswith("\nout, state = rnn(x, state)")
    # THEN the suggested lines run as they are for every shape a recurrent state takes
    prelude = f.after.rsplit("\n", 1)[0]
    for state in (None, torch.ones(2, requires_grad=True) * 2, (torch.ones(2, requires_grad=True) * 2,) * 2):
        scope = {"torch": torch, "state": state}
        exec(prelude, scope)
        kept = scope["state"]
        assert all(s.grad_fn is None for s in ((kept,) if torch.is_tensor(kept) else kept or ()))


def test_prediction_over_labels_and_layers_is_one_missing_no_grad():
    # GIVEN a forward-forward style `predict` without no_grad: a stack of layers run per label, a
    # list reset per label, one score per label kept: the graphs kept are that forward's
    findings = check("""
import torch
from torch import nn

class Layer(nn.Linear):
    pass

class Net(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.layers = [Layer(dims[d], dims[d + 1]) for d in range(len(dims) - 1)]
        for layer in self.layers:
            layer.train()

    def predict(self, x):
        per_label = []
        for label in range(10):
            h = overlay(x, label)
            goodness = []
            for layer in self.layers:
                h = layer(h)  # oomdoctor: missing-no-grad
                goodness = goodness + [h.pow(2).mean(1)]
            per_label += [sum(goodness).unsqueeze(1)]
        return torch.cat(per_label, 1).argmax(1)
""")
    assert findings[0].before == "for label in range(10):"


def test_outputs_kept_over_a_data_loop_are_still_a_retained_graph_too():
    # The evaluation loop runs over the data: what it keeps grows with the data set, not the code.
    check(TRAIN + """
def validate(model, loader):
    model.eval()
    scores = []
    for x, y in loader:
        out = model(x)  # oomdoctor: missing-no-grad
        scores.append(out)  # oomdoctor: retained-graph
    return torch.cat(scores)
""")


def test_a_layer_stack_in_a_training_forward_is_fine():
    check(TRAIN + """
for x, y in loader:
    h = x
    for block in blocks:
        h = block(h)
    loss = criterion(h, y)
    loss.backward()
    optimizer.step()
""")


# -- missing-no-grad: one forward whose output is only looked at ---------------------------------

def test_generator_samples_saved_in_the_training_loop():
    [f] = check(GENERATOR + """
for i, real in enumerate(loader):
    fake = netG(torch.randn(16, 4))
    d_loss = bce(netD(real), ones) + bce(netD(fake.detach()), zeros)
    d_loss.backward()
    opt_d.step()
    g_loss = bce(netD(fake), ones)
    g_loss.backward()
    opt_g.step()
    if i % 100 == 0:
        fake = netG(fixed_noise)  # oomdoctor: missing-no-grad
        vutils.save_image(fake.detach(), "samples.png")
""")
    assert f.after == "with torch.no_grad():\n    fake = netG(fixed_noise)"
    assert "`fake` is only looked at" in f.message


def test_outputs_read_as_numbers_in_a_training_loop():
    check(TRAIN + """
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    held_out = model(x_val)  # oomdoctor: missing-no-grad
    accuracy = held_out.argmax(1).eq(y_val).float().mean().item()
""")


def test_outputs_that_reach_a_loss_or_leave_are_not_reported():
    # GIVEN outputs used by a loss later in the step, in the next iteration, after the loop, or
    # returned; a frozen model; a result never read; shape checks; a warm-up call
    check(GENERATOR + """
frozen = nn.Linear(4, 8)
frozen.requires_grad_(False)
last = None
for i, real in enumerate(loader):
    if last is not None:
        bce(netD(last), ones).backward()
    last = netG(torch.randn(16, 4))
    print(last.detach().mean().item())
    feats = frozen(real)
    print(feats.detach().norm().item())
    unused = netG(fixed_noise)
    shaped = netG(fixed_noise)
    assert shaped.shape == (16, 8)
    _ = netG(fixed_noise)
    kept = netG(fixed_noise)
    vutils.save_image(kept.detach(), "x.png")
    opt_d.step()
final = kept

def sample(n):
    for _ in range(n):
        image = netG(torch.randn(1, 4))
        print(image.detach().sum().item())
    return image
""")


def test_test_files_are_not_checked_for_single_forwards(tmp_path):
    from oomdoctor.lint import lint_file

    source = GENERATOR + "def test_shapes():\n    for n in (1, 2):\n        out = netG(torch.randn(n, 4))\n" \
                         "        assert out.detach().abs().max().item() <= 1\n"
    (tmp_path / "test_gen.py").write_text(source)
    (tmp_path / "gen.py").write_text(source)
    assert lint_file(tmp_path / "test_gen.py") == []
    assert [f.kind for f in lint_file(tmp_path / "gen.py")] == ["missing-no-grad"]


def test_the_reads_are_followed_through_branches_and_the_next_iteration():
    # `out` is rebound on one branch only, then read on the next iteration: by a loss, or only shown.
    loop = GENERATOR + """
out = None
for i, real in enumerate(loader):
    if out is not None and i % 2:
        bce(netD(out), ones).backward()
    if i % 3:
        out = netG(fixed_noise){marker}
        print(out.detach().mean().item())
"""
    check(loop.format(marker=""))
    check(loop.replace("bce(netD(out), ones).backward()", "print(out.detach())").format(
        marker="  # oomdoctor: missing-no-grad"))


# -- shapes from other well-known codebases (YOLOv5, ignite, an image-captioning tutorial) ---------

def test_a_decorator_named_like_inference_mode_turns_gradients_off():
    check(TRAIN + """
def smart_inference_mode():
    return torch.inference_mode()

@smart_inference_mode()
def run(model, loader):
    model.eval()
    loss, stats = 0, []
    for x, y in loader:
        out = model(x)
        loss += criterion(out, y)
        stats.append(out)
    return loss, stats
""")


def test_only_the_first_value_of_a_loss_function_is_the_loss():
    check(TRAIN + """
mean_items, total_loss = torch.zeros(3), 0
for i, (x, y) in enumerate(loader):
    loss, loss_items = compute_loss(model(x), y)
    loss.backward()
    optimizer.step()
    mean_items = (mean_items * i + loss_items) / (i + 1)
    total_loss += loss  # oomdoctor: retained-graph
""")


def test_a_functional_loss_of_inputs_without_a_graph_has_none():
    # GIVEN a metric whose inputs were detached by its caller
    check("""
import torch
import torch.nn.functional as F

class KLDivergence:
    def update(self, output):
        self._update(output[0].detach(), output[1].detach())

    def _update(self, y_pred, y):
        y_pred = F.log_softmax(y_pred, dim=1)
        self._sum_of_kl += F.kl_div(y_pred, F.log_softmax(y, dim=1), log_target=True, reduction="sum")
""")


def test_a_tensor_narrowed_from_itself_is_not_a_new_graph_each_step():
    check(TRAIN + """
def evaluate(loader):
    model.eval()
    for x, y in loader:
        out = model(x)  # oomdoctor: missing-no-grad
        while out.size(0) > 1:
            keep = out.norm(dim=1) > out.norm(dim=1).mean()
            out = out[keep]
""")


def test_a_loss_read_only_by_backward_is_back_propagated():
    # A loss module built inline (DINO's linear evaluation) is a module call; `.backward()` is its use.
    check(TRAIN + """
for x, y in loader:
    output = model(x)
    loss = nn.CrossEntropyLoss()(output, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
""")


def test_logits_kept_on_the_host_still_carry_the_graph():
    # `.to("cpu")` is differentiable: the copy links to the step's graph (accelerate's fp8 benchmarks).
    check(TRAIN + """
kept = []
for x, y in loader:
    logits = model(x)
    kept.append(logits.to("cpu"))  # oomdoctor: retained-graph
    loss = criterion(logits, y)
    loss.backward()
    optimizer.step()
""")


def test_a_log_dict_detached_where_its_values_are_tensors_is_fine():
    # pytorch-forecasting's fix: `v.detach() if torch.is_tensor(v) else v` over a log dict
    check(TRAIN + """
outputs = []
for x, y in loader:
    loss = criterion(model(x), y)
    log = {"loss": loss, "n": len(x)}
    outputs.append({k: v.detach() if torch.is_tensor(v) else v for k, v in log.items()})
    outputs.append({k: v if not isinstance(v, torch.Tensor) else v.detach() for k, v in log.items()})
    loss.backward()
    optimizer.step()
    outputs.append({k: v.detach() if torch.is_tensor(v) else log for k, v in log.items()})  # oomdoctor: retained-graph
""")


def test_a_step_method_called_on_a_module_returns_its_graph():
    # packnet-sfm's trainer keeps the dict `module.training_step(...)` returns; its fix detaches the loss
    source = TRAIN + """
class Net(nn.Module):
    def training_step(self, batch, i):
        loss = criterion(self.net(batch[0]), batch[1])
        return {"loss": loss, "i": i}

def fit(module, loader):
    outputs = []
    for i, batch in enumerate(loader):
        output = module.training_step(batch, i)
        output["loss"].backward()
        optimizer.step()
        outputs.append(output)FIX
    return outputs
"""
    check(source.replace("FIX", "  # oomdoctor: retained-graph"))
    check(source.replace("FIX", "").replace('        outputs.append(output)',
                                        '        output["loss"] = output["loss"].detach()\n'
                                        '        outputs.append(output)'))


def test_a_local_function_that_runs_the_forward_is_a_forward():
    # fairchem's trainer validates through `self._forward(batch)`; a local step that also
    # back-propagates is not a forward
    check(TRAIN + """
class Trainer:
    def _forward(self, batch):
        return self.model(batch["x"])

    def forward(self, batch):
        loss = criterion(self.model(batch["x"]), batch["y"])
        loss.backward()
        return loss

    def validate(self, loader):
        self.model.eval()
        total = 0.0
        for batch in loader:
            out = self._forward(batch)  # oomdoctor: missing-no-grad
            total += (out - batch["y"]).abs().sum().item()
        for batch in loader:
            total += self.forward(batch).item()
        return total
""")
