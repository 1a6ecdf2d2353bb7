"""`oomdoctor lint`: the static twin of the runtime diagnoses.

Each snippet marks the lines lint must report with a trailing `# oomdoctor: <kind>` (the same
marker the recipes use), so every test checks the exact kind and line, and that nothing else is
reported. Snippets without a marker are patterns users write on purpose: lint must stay silent.
"""
from __future__ import annotations

import json
import re
import shutil
import textwrap

import pytest

from conftest import RECIPES, run_cli
from oomdoctor.errors import BadInput
from oomdoctor.lint import LintFinding, lint_file, lint_source, python_files

MARKER = re.compile(r"#\s*oomdoctor:\s*([a-z-]+)\s*$")
LINT_KINDS = {"retained-graph", "missing-no-grad", "memory-growth"}


def marked(source: str) -> set[tuple[str, int]]:
    return {(m.group(1), n) for n, line in enumerate(source.splitlines(), 1)
            for m in [MARKER.search(line)] if m and m.group(1) in LINT_KINDS}


def check(snippet: str) -> list[LintFinding]:
    """GIVEN a snippet WHEN linted THEN exactly its marked lines are reported, with their kinds."""
    source = textwrap.dedent(snippet)
    findings = lint_source(source, "snippet.py")
    assert {(f.kind, f.line) for f in findings} == marked(source)
    return findings


TRAIN = """\
import torch
import torch.nn.functional as F
from torch import nn
model = nn.Linear(8, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
criterion = nn.CrossEntropyLoss()
"""


# -- retained-graph: positives -------------------------------------------------------------------

def test_total_loss_plus_equals_loss():
    [f] = check(TRAIN + """
total_loss = 0
for x, y in loader:
    loss = criterion(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    total_loss += loss  # oomdoctor: retained-graph
""")
    assert (f.before, f.after, f.function) == ("total_loss += loss", "total_loss += loss.item()", "<module>")
    assert "total_loss" in f.message


def test_total_equals_total_plus_loss_call():
    [f] = check(TRAIN + """
total = 0
for x, y in loader:
    out = model(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    optimizer.step()
    total = total + F.cross_entropy(out, y)  # oomdoctor: retained-graph
""")
    assert f.after == "total = total + F.cross_entropy(out, y).item()"


def test_losses_append_in_a_while_loop():
    [f] = check(TRAIN + """
losses = []
step = 0
while step < 100:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss)  # oomdoctor: retained-graph
    step += 1
""")
    assert f.after == "losses.append(loss.item())"


def test_value_named_anything_from_a_loss_function_and_its_reductions():
    check(TRAIN + """
stats, running = [], 0
for x, y in loader:
    out = model(x)
    l = criterion(out, y)
    l.backward()
    optimizer.step()
    running += l  # oomdoctor: retained-graph
    stats.append(out.sum())  # oomdoctor: retained-graph
""")


def test_dict_of_lists_and_setdefault():
    check(TRAIN + """
history = {}
for x, y in loader:
    logits = model(x)
    loss = criterion(logits, y)
    loss.backward()
    optimizer.step()
    history["logits"].append(logits)  # oomdoctor: retained-graph
    history.setdefault("loss", []).append(loss)  # oomdoctor: retained-graph
""")


def test_trainer_attribute_history_inside_a_method():
    [f] = check(TRAIN + """
class Trainer:
    def __init__(self):
        self.history = {"logits": []}

    def fit(self, loader):
        for x, y in loader:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            self.optimizer.step()
            self.history["logits"].append(logits)  # oomdoctor: retained-graph
""")
    assert f.function == "Trainer.fit"
    assert f.after == 'self.history["logits"].append(logits.detach().cpu())'


def test_module_attribute_rebuilt_from_itself_in_forward():
    [f] = check("""
import torch
from torch import nn

class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 4)
        self.bank = torch.zeros(0, 4)

    def forward(self, x):
        feats = self.proj(x)
        self.bank = torch.cat([self.bank, feats])[-256:]  # oomdoctor: retained-graph
        return feats
""")
    assert f.function == "Encoder.forward"
    assert f.after == "self.bank = torch.cat([self.bank, feats.detach()])[-256:]"


def test_attribute_accumulated_in_a_step_method_called_once_per_step():
    check("""
import torch.nn.functional as F

class Module:
    def training_step(self, batch):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.epoch_loss += loss  # oomdoctor: retained-graph
        self.outputs.append(loss)  # oomdoctor: retained-graph
        return loss
""")


def test_global_list_appended_in_a_step_function():
    check(TRAIN + """
HISTORY = []

def train_step(x, y):
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    HISTORY.append(loss)  # oomdoctor: retained-graph
""")


def test_total_reset_per_epoch_still_grows_within_the_epoch():
    check(TRAIN + """
for epoch in range(10):
    epoch_loss = 0
    for x, y in loader:
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        epoch_loss += loss  # oomdoctor: retained-graph
""")


def test_reset_only_every_n_steps_still_keeps_n_graphs():
    check(TRAIN + """
running = 0
for i, (x, y) in enumerate(loader):
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    running += loss  # oomdoctor: retained-graph
    if i % 100 == 99:
        print(running / 100)
        running = 0
""")


def test_loss_returned_by_a_local_step_function():
    check(TRAIN + """
def train_step(x, y):
    loss = criterion(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss

total = 0
for x, y in loader:
    total += train_step(x, y)  # oomdoctor: retained-graph
""")


def test_model_outputs_loss_attribute():
    check("""
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained("x")
losses = []
for batch in loader:
    outputs = model(**batch)
    outputs.loss.backward()
    optimizer.step()
    losses.append(outputs.loss)  # oomdoctor: retained-graph
""")


def test_rnn_hidden_state_carried_across_steps_without_detach():
    check(TRAIN + """
rnn = nn.GRU(8, 16)
hidden = None
for x, y in loader:
    out, hidden = rnn(x, hidden)  # oomdoctor: retained-graph
    loss = criterion(out[-1], y)
    loss.backward()
    optimizer.step()
""")


def test_fix_keeps_the_rest_of_a_line_with_non_ascii_text():
    [f] = check(TRAIN + """
journal = {"époque": []}
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    journal["époque"].append(loss)  # oomdoctor: retained-graph
""")
    assert f.after == 'journal["époque"].append(loss.item())'


def test_multi_line_statement_is_reported_at_its_first_line():
    [f] = check(TRAIN + """
total = 0
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    total = (total +  # oomdoctor: retained-graph
             loss)
""")
    assert f.after == "total = (total +  # oomdoctor: retained-graph\n         loss.item())"


# -- retained-graph: what users write on purpose ------------------------------------------------

def test_numbers_and_detached_values_are_fine():
    check(TRAIN + """
running, hist, values, floats, cpu = 0.0, [], [], [], []
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    running += loss.item()
    running += float(loss)
    hist.append(loss.detach())
    values.append(loss.tolist())
    cpu.append(loss.cpu().numpy())
    floats.append(loss.data)
""")


def test_gradient_accumulation_with_backward_on_the_sum_and_reset():
    check(TRAIN + """
accumulated = 0
for i, (x, y) in enumerate(loader):
    accumulated = accumulated + criterion(model(x), y) / 4
    if (i + 1) % 4 == 0:
        accumulated.backward()
        optimizer.step()
        optimizer.zero_grad()
        accumulated = 0
""")


def test_gradient_accumulation_over_micro_batches():
    check(TRAIN + """
for step in range(100):
    total = 0
    for micro in range(4):
        x, y = next(batches)
        total += criterion(model(x), y) / 4
    optimizer.zero_grad()
    (total * scale).backward()
    optimizer.step()
""")


def test_a_local_adding_up_one_steps_micro_batches_already_back_propagated():
    # pytorch-lr-finder's `_train_batch`: each micro-batch's loss is back-propagated, added to a
    # local, and the call returns its `.item()` after the optimizer step: nothing outlives the call
    check(TRAIN + """
def train_batch(batches, accumulation_steps):
    total_loss = None
    for i in range(accumulation_steps):
        x, y = next(batches)
        loss = criterion(model(x), y) / accumulation_steps
        loss.backward()
        if total_loss is None:
            total_loss = loss
        else:
            total_loss += loss
    optimizer.step()
    return total_loss.item()


for step in range(100):
    print(train_batch(batches, 4))
""")


def test_a_bounded_training_loop_that_steps_still_keeps_every_graph():
    check(TRAIN + """
def train(steps):
    total = 0
    for i in range(steps):
        x, y = next(batches)
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss  # oomdoctor: retained-graph
    return total.item() / steps
""")

def test_losses_collected_then_back_propagated_together():
    check(TRAIN + """
for x, y in loader:
    losses = []
    for head in heads:
        losses.append(criterion(head(model(x)), y))
    total = torch.stack(losses).sum()
    total.backward()
    optimizer.step()
""")


def test_gan_with_detached_fakes_and_logged_numbers():
    check("""
import torch
from torch import nn
G = nn.Linear(4, 8)
D = nn.Linear(8, 1)
bce = nn.BCEWithLogitsLoss()
g_hist, d_hist = [], []
for real in loader:
    fake = G(torch.randn(16, 4))
    d_loss = bce(D(real), ones) + bce(D(fake.detach()), zeros)
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss = bce(D(fake), ones)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()
    g_hist.append(g_loss.item())
    d_hist.append(d_loss.item())
""")


def test_rnn_hidden_state_detached_each_step():
    check(TRAIN + """
rnn = nn.GRU(8, 16)
hidden = torch.zeros(1, 4, 16)
for x, y in loader:
    hidden = hidden.detach()
    out, hidden = rnn(x, hidden)
    loss = criterion(out[-1], y)
    loss.backward()
    optimizer.step()
""")


def test_forward_collecting_features_and_residuals_over_layers():
    check("""
from torch import nn

class Net(nn.Module):
    def forward(self, x):
        features = []
        for layer in self.layers:
            x = x + layer(x)
            features.append(x)
        self.last_features = features
        return x, features
""")


def test_per_step_scratch_lists_and_last_output_kept():
    check(TRAIN + """
for x, y in loader:
    parts, sizes = [], []
    for chunk in x.split(4):
        parts.append(model(chunk))
        sizes.append(len(chunk))
    accuracy = torch.cat(parts).argmax(1).eq(y).float().mean().item()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    last_output = parts[-1]
""")


def test_accumulation_under_no_grad_records_no_graph():
    check(TRAIN + """
total = 0
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        total += loss
""")


# The shapes of PyTorch's transfer-learning tutorial, the ImageNet example's validate() and Hugging
# Face's run_glue_no_trainer: the code users copy most.
OFFICIAL = """\
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained("x")
criterion = nn.CrossEntropyLoss()

for epoch in range(num_epochs):
    for phase in ["train", "val"]:
        if phase == "train":
            model.train()
        else:
            model.eval()
        running_loss, running_corrects = 0.0, 0
        for inputs, labels in dataloaders[phase]:
            optimizer.zero_grad()
            with torch.set_grad_enabled(phase == "train"):
                outputs = model(inputs)
                _, preds = torch.max(outputs, 1)
                loss = criterion(outputs, labels)
                if phase == "train":
                    loss.backward()
                    optimizer.step()
            running_loss += loss.item() * inputs.size(0)
            running_corrects += torch.sum(preds == labels.data)

def validate(val_loader, model, criterion):
    def run_validate(loader):
        with torch.no_grad():
            for i, (images, target) in enumerate(loader):
                output = model(images)
                loss = criterion(output, target)
                losses.update(loss.item(), images.size(0))
    model.eval()
    run_validate(val_loader)

for epoch in range(num_train_epochs):
    model.train()
    total_loss = 0
    for step, batch in enumerate(train_dataloader):
        outputs = model(**batch)
        loss = outputs.loss
        total_loss += loss.detach().float()
        accelerator.backward(loss / gradient_accumulation_steps)
        optimizer.step()
    model.eval()
    for step, batch in enumerate(eval_dataloader):
        with torch.no_grad():
            outputs = model(**batch)
        predictions = outputs.logits.argmax(dim=-1)
        metric.add_batch(predictions=predictions, references=batch["labels"])
"""


def test_well_known_official_loops_are_clean():
    check(OFFICIAL)


@pytest.mark.parametrize("good, bad", [
    ("running_loss += loss.item() * inputs.size(0)",
     "running_loss += loss * inputs.size(0)  # oomdoctor: retained-graph"),
    ("total_loss += loss.detach().float()", "total_loss += loss.float()  # oomdoctor: retained-graph"),
    ("        with torch.no_grad():\n"
     "            outputs = model(**batch)",
     "        outputs = model(**batch)  # oomdoctor: missing-no-grad"),
    ("        with torch.no_grad():\n"
     "            for i, (images, target) in enumerate(loader):\n"
     "                output = model(images)\n"
     "                loss = criterion(output, target)\n"
     "                losses.update(loss.item(), images.size(0))",
     "        for i, (images, target) in enumerate(loader):\n"
     "            output = model(images)  # oomdoctor: missing-no-grad\n"
     "            loss = criterion(output, target)\n"
     "            losses.update(loss.item(), images.size(0))"),
])
def test_one_line_mutation_of_the_official_loops_is_caught(good, bad):
    # GIVEN the clean loops WHEN one change reintroduces a bug THEN lint reports that line, only.
    assert good in OFFICIAL
    check(OFFICIAL.replace(good, bad))


def test_ignore_comment_silences_a_line():
    check(TRAIN + """
losses = []
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
    losses.append(loss)  # oomdoctor: ignore
""")


# -- missing-no-grad -----------------------------------------------------------------------------

def test_loop_after_model_eval_without_no_grad():
    [f] = check(TRAIN + """
model.eval()
correct = 0
for x, y in val_loader:
    logits = model(x)  # oomdoctor: missing-no-grad
    correct += (logits.argmax(1) == y).sum().item()
""")
    assert f.before == "for x, y in val_loader:"
    assert f.after == "with torch.no_grad():\n    for x, y in val_loader:"
    assert "`model(...)`" in f.message


def test_evaluate_function_keeping_outputs_reports_both():
    check(TRAIN + """
def evaluate(model, loader):
    outputs = []
    for x, y in loader:
        out = model(x)  # oomdoctor: missing-no-grad
        outputs.append(out)  # oomdoctor: retained-graph
    return torch.cat(outputs)
""")


def test_validation_inside_the_epoch_loop_and_self_model_calls():
    check(TRAIN + """
class Trainer:
    def fit(self, epochs):
        for epoch in range(epochs):
            self.model.train()
            for x, y in self.train_loader:
                loss = criterion(self.model(x), y)
                loss.backward()
                self.optimizer.step()
            self.model.eval()
            val_loss = 0.0
            for x, y in self.val_loader:
                val_loss += criterion(
                    self.model(x), y).item()  # oomdoctor: missing-no-grad
""")


def test_evaluation_under_no_grad_inference_mode_or_disabled_grad():
    check(TRAIN + """
@torch.no_grad()
def evaluate(model, loader):
    return [model(x) for x in loader]

@torch.inference_mode()
def predict(model, loader):
    outs = []
    for x in loader:
        outs.append(model(x))
    return outs

def validate(model, loader):
    model.eval()
    outs = []
    with torch.inference_mode():
        for x in loader:
            outs.append(model(x))
    with torch.set_grad_enabled(False):
        for x in loader:
            outs.append(model(x))
    return outs

def test_epoch(model, loader):
    torch.set_grad_enabled(False)
    for x in loader:
        model(x)
""")


def test_evaluate_called_only_under_no_grad():
    check(TRAIN + """
def evaluate(model, loader):
    model.eval()
    return [model(x).argmax(1) for x in loader] + [model(x) for x in loader]

def run_eval(loader):
    scores = []
    for x in loader:
        scores.append(model(x))
    return scores

with torch.no_grad():
    evaluate(model, val_loader)
    run_eval(val_loader)
""")


def test_loops_that_back_propagate_are_not_evaluation():
    check(TRAIN + """
def test_time_adaptation(model, loader):
    model.eval()
    for x in loader:
        loss = model(x).mean()
        loss.backward()
        optimizer.step()

def predict_saliency(model, x):
    for target in range(10):
        score = model(x)[0, target]
        grad, = torch.autograd.grad(score, x)
""")


def test_lightning_validation_step_runs_under_no_grad():
    check("""
import lightning as L

class Model(L.LightningModule):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        for chunk in x.split(2):
            self.val_outputs.append(self(chunk))
""")


def test_pytest_functions_in_test_files_are_not_evaluation_loops(tmp_path):
    source = TRAIN + "def test_shapes():\n    for n in (1, 2):\n        assert model(torch.randn(n, 8)).shape == (n, 2)\n"
    (tmp_path / "test_model.py").write_text(source)
    assert lint_file(tmp_path / "test_model.py") == []
    (tmp_path / "evaluation.py").write_text(source)
    assert [f.kind for f in lint_file(tmp_path / "evaluation.py")] == ["missing-no-grad"]


# -- memory-growth -------------------------------------------------------------------------------

def test_detached_copies_appended_every_step():
    [f] = check(TRAIN + """
cache = []
for x, y in loader:
    features = model(x)
    loss = criterion(features, y)
    loss.backward()
    optimizer.step()
    cache.append(features.detach().clone())  # oomdoctor: memory-growth
""")
    assert f.after.splitlines()[1].startswith("del cache[:-100]")


def test_bounded_conditional_or_host_side_caches_are_fine():
    check(TRAIN + """
from collections import deque
window, warm, host, trimmed, shapes = deque(maxlen=8), [], [], [], {}
for step, (x, y) in enumerate(loader):
    features = model(x)
    loss = criterion(features, y)
    loss.backward()
    optimizer.step()
    window.append(features.detach())
    if step < 5:
        warm.append(features.detach())
    host.append(features.detach().cpu())
    trimmed.append(features.detach())
    del trimmed[:-8]
    shapes[x.shape] = features.detach()
""")


# -- files and folders ---------------------------------------------------------------------------

def test_lint_file_reports_the_file_and_function(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(TRAIN + "def fit():\n    losses = []\n    for x, y in loader:\n"
                    "        loss = criterion(model(x), y)\n        loss.backward()\n"
                    "        losses.append(loss)\n")
    [f] = lint_file(path)
    assert (f.kind, f.file, f.line, f.function) == ("retained-graph", str(path), 12, "fit")


@pytest.mark.parametrize("content, words", [
    ("x = 1\ndef f(:\n    pass\n", "2: cannot parse"),
    ("x = '\0'\n", "cannot parse"),
    (b"x = '\xff\xfe'\n", "cannot read"),
])
def test_unparsable_or_unreadable_file_is_one_bad_input(tmp_path, content, words):
    path = tmp_path / "bad.py"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(BadInput, match=words):
        lint_file(path)


def test_folders_are_searched_for_python_files(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    for name in ("pkg/a.py", "pkg/sub/b.py", ".venv/lib/c.py", "pkg/notes.txt"):
        (tmp_path / name).write_text("x = 1\n")
    assert [p.relative_to(tmp_path).as_posix() for p in python_files([str(tmp_path)])] == ["pkg/a.py", "pkg/sub/b.py"]


# -- the command ---------------------------------------------------------------------------------

BUGGY = TRAIN + "total = 0\nfor x, y in loader:\n    loss = criterion(model(x), y)\n    loss.backward()\n" \
                "    optimizer.step()\n    total += loss\n"


def test_cli_text_output_and_exit_code_one(tmp_path):
    (tmp_path / "train.py").write_text(BUGGY)
    result = run_cli("lint", "train.py", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("train.py:12: retained-graph `total` adds up `loss`")
    assert "    - total += loss" in lines and "    + total += loss.item()" in lines
    assert any(line.startswith("  why: ") for line in lines)
    assert lines[-1] == "1 finding in 1 file (1 checked)"


def test_cli_clean_file_exits_zero(tmp_path):
    (tmp_path / "ok.py").write_text(BUGGY.replace("total += loss", "total += loss.item()"))
    result = run_cli("lint", str(tmp_path), cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "no findings in 1 file\n", "")


def test_cli_json(tmp_path):
    (tmp_path / "train.py").write_text(BUGGY)
    result = run_cli("lint", "--json", "train.py", cwd=tmp_path)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["schema"] == "oomdoctor.lint/1" and data["files_checked"] == 1 and data["errors"] == []
    assert data["findings"] == [{"kind": "retained-graph", "file": "train.py", "line": 12, "function": "<module>",
                                 "message": data["findings"][0]["message"], "before": "total += loss",
                                 "after": "total += loss.item()"}]


def test_cli_missing_path_is_one_line_and_checks_nothing(tmp_path):
    (tmp_path / "train.py").write_text(BUGGY)
    result = run_cli("lint", "train.py", "nope.py", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "oomdoctor: error: no such file or folder: nope.py\n"


def test_cli_syntax_error_in_one_file_still_checks_the_others(tmp_path):
    (tmp_path / "a_bad.py").write_text("def f(:\n")
    (tmp_path / "b_train.py").write_text(BUGGY)
    result = run_cli("lint", ".", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout.startswith("b_train.py:12: retained-graph")
    assert result.stderr == "oomdoctor: error: a_bad.py:1: cannot parse: invalid syntax\n"


def test_cli_without_paths_is_a_usage_error(tmp_path):
    result = run_cli("lint", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("oomdoctor: error: ")


# -- the recipes ---------------------------------------------------------------------------------

BUGGY_RECIPES = ["retained_graph_total_loss", "retained_graph_losses_append", "retained_graph_history",
                 "retained_graph_feature_bank", "missing_no_grad_eval", "memory_growth_cache"]
CLEAN_RECIPES = [f"{name}_fixed" for name in BUGGY_RECIPES] + [
    "clean_grad_accumulation", "clean_gan", "clean_eval_no_grad", "clean_warmup_cache"]


@pytest.mark.parametrize("name", BUGGY_RECIPES)
def test_buggy_recipe_is_reported_at_its_marked_lines(name):
    path = RECIPES / f"{name}.py"
    expected = marked(path.read_text())
    assert expected, "a buggy recipe marks its offending line"
    assert {(f.kind, f.line) for f in lint_file(path)} == expected
    # The story in the docstring names the same kinds and lines.
    doc = path.read_text().split('"""')[1]
    assert {(k, int(n)) for k, n in re.findall(r"([a-z-]+) at\s+line (\d+)", doc)} == expected


@pytest.mark.parametrize("name", CLEAN_RECIPES)
def test_fixed_and_clean_recipes_have_no_finding(name):
    path = RECIPES / f"{name}.py"
    assert not MARKER.search(path.read_text())
    assert lint_file(path) == []


def test_cli_on_the_recipes_folder(tmp_path):
    for name in BUGGY_RECIPES + CLEAN_RECIPES:
        shutil.copy(RECIPES / f"{name}.py", tmp_path)
    result = run_cli("lint", str(tmp_path))
    assert result.returncode == 1, result.stderr
    reported = set(re.findall(r"^.*/(\w+\.py):(\d+): ([a-z-]+) ", result.stdout, re.M))
    expected = {(f"{name}.py", str(line), kind) for name in BUGGY_RECIPES
                for kind, line in marked((RECIPES / f"{name}.py").read_text())}
    assert reported == expected
