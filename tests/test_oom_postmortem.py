"""An OOM run gets a post-mortem that adds up: where, in which step and phase, what was live, and
ranked fixes whose numbers are measured or marked as estimates, shown on the user's own lines."""
from __future__ import annotations

import json
import re
import textwrap

import pytest

from conftest import RECIPES, run_cli
from oomdoctor.diagnosis import forward_line
from oomdoctor.diagnosis.failure_names import names_at_failure
from oomdoctor.diagnosis.remedies import Situation, accumulation, batch_that_fits, rank

MIB = 1024 * 1024
RECIPE = RECIPES / "oom_big_batch.py"


def _marked_line(path, kind: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if f"# oomdoctor: {kind}" in line:
            return number
    raise AssertionError(f"no marker for {kind}")


def _line(path, text: str) -> str:
    return next(line.strip() for line in path.read_text().splitlines() if text in line)


@pytest.fixture(scope="module")
def big_batch(tmp_path_factory):
    """`oomdoctor run --capacity 40MiB recipes/oom_big_batch.py --batch-size 2000 --json r.json`."""
    cwd = tmp_path_factory.mktemp("oom")
    result = run_cli("run", "--quiet", "--capacity", "40MiB", "--json", "r.json", str(RECIPE),
                     "--batch-size", "2000", cwd=cwd)
    report = json.loads((cwd / "r.json").read_text())
    oom = [f for f in report["findings"] if f["kind"] == "oom"]
    assert len(oom) == 1, report["findings"]
    return result, report, oom[0]


def test_the_finding_names_the_line_and_phase_and_its_numbers_add_up(big_batch):
    result, report, finding = big_batch
    # THEN it fails like python would, at the marked line, in the backward pass
    assert result.returncode == 1
    assert finding["location"]["line"] == _marked_line(RECIPE, "oom")
    assert finding["location"]["file"].endswith("oom_big_batch.py")
    evidence = finding["evidence"]
    assert evidence["phase"] == "backward" and evidence["batch_size"] == 2000
    # The bytes asked for are the exact request (a 2000 × 1024 float32 gradient), not the
    # message's rounded "7.81 MiB"; what was live plus the request does not fit the capacity.
    assert finding["bytes"] == 2000 * 1024 * 4
    assert sum(evidence["by_category"].values()) == evidence["live_bytes"]
    assert evidence["live_bytes"] + finding["bytes"] > report["device"]["capacity_bytes"]
    # Parameters are counted from the first forward, in the finding and in the chart beside it.
    params = sum(p.numel() * 4 for p in [*_linear(256, 1024), *_linear(1024, 1024), *_linear(1024, 10)])
    assert evidence["by_category"]["parameters"] == params
    assert report["peak_by_category"]["parameters"] == params


def _linear(n_in: int, n_out: int):
    import torch

    return [torch.empty(n_out, n_in), torch.empty(n_out)]


def test_the_header_and_the_finding_name_the_same_step(big_batch):
    _, report, finding = big_batch
    # The OOM happened in the first iteration's backward pass: the step that was open.
    step = finding["evidence"]["step"]
    assert step == 0 and report["peak_step"] == step
    assert f"step {step}" in finding["title"]
    assert step in [s["index"] for s in report["steps"]]


def test_remedies_are_ranked_distinct_and_never_del_saved_activations(big_batch):
    _, _, finding = big_batch
    remedies = finding["remedies"]
    savings = [r["saves_bytes"] or 0 for r in remedies]
    assert savings == sorted(savings, reverse=True)  # ranked by the memory they save
    keys = [(r["title"], r["before"], r["after"]) for r in remedies]
    assert len(keys) == len(set(keys)), keys
    # The largest tensors are activations saved for backward: no `del` frees them.
    assert not [r for r in remedies if "`del" in r["title"]], remedies


def test_the_batch_remedy_keeps_the_effective_batch_and_really_fits(big_batch, tmp_path):
    _, report, finding = big_batch
    batch = [r for r in finding["remedies"] if r["title"].startswith("Use batch size")]
    assert len(batch) == 1, finding["remedies"]
    size, steps = map(int, re.search(r"batch size (\d+) and accumulate gradients over (\d+) steps",
                                     batch[0]["title"]).groups())
    assert size * steps == 2000 and 1 <= size < 2000
    assert f"{size} × {steps} = 2000" in batch[0]["detail"]
    assert f"(loss / {steps}).backward()" in batch[0]["after"]
    # The per-sample cost is an estimate (no step of 2000 completed) and says why; the numbers
    # shown are those of the finding's evidence, and they add up.
    assert "Estimated" in batch[0]["detail"] and "lower bound" in batch[0]["detail"]
    fit = finding["evidence"]["batch_fit"]
    assert (fit["size"], fit["accumulation_steps"], fit["per_sample_measured"]) == (size, steps, False)
    assert batch[0]["saves_bytes"] == fit["saves_bytes"] == int((2000 - size) * fit["per_sample_bytes"])
    fixed = 2 * finding["evidence"]["by_category"]["parameters"]  # parameters and their gradients
    assert fit["largest_that_fits"] == int((0.9 * report["device"]["capacity_bytes"] - fixed)
                                           // fit["per_sample_bytes"])
    assert size <= fit["largest_that_fits"] and f"Up to {fit['largest_that_fits']} samples fit" in batch[0]["detail"]
    # WHEN the fixed twin runs the same effective batch in the recommended micro-batches
    fixed = RECIPES / "oom_big_batch_fixed.py"
    again = run_cli("run", "--quiet", "--capacity", "40MiB", "--json", "r.json", str(fixed), "--batch-size", "2000",
                    "--accumulate", str(steps), cwd=tmp_path)
    # THEN it fits, and the batch the run saw is the recommended size
    assert again.returncode == 0, again.stderr[-2000:]
    fixed_report = json.loads((tmp_path / "r.json").read_text())
    assert fixed_report["aggregates"]["batch_size"] == size and not fixed_report["findings"]


def test_autocast_and_checkpoint_show_the_users_own_forward_line(big_batch):
    _, _, finding = big_batch
    line = _line(RECIPE, "loss = model(x)")
    by_title = {r["title"]: r for r in finding["remedies"]}
    autocast = by_title["Run the forward pass in bf16 autocast"]
    assert autocast["before"] == line
    assert autocast["after"] == f"with torch.autocast(device_type='cpu', dtype=torch.bfloat16):\n    {line}"
    assert "estimate" in autocast["detail"]
    checkpoint = by_title["Checkpoint the model in 2 segments"]
    assert checkpoint["before"] == line
    assert checkpoint["after"] == ("from torch.utils.checkpoint import checkpoint_sequential\n"
                                   "loss = checkpoint_sequential(model, 2, x, use_reentrant=False).logsumexp(-1).mean()")
    # The rewritten lines run, on the recipe's model, and give the same loss.
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.GELU(), nn.Linear(1024, 10))
    x = torch.randn(4, 256)
    plain, checkpointed = {"model": model, "x": x}, {"model": model, "x": x, "torch": torch}
    exec(line, plain)
    exec(checkpoint["after"], checkpointed)
    checkpointed["loss"].backward()
    assert torch.allclose(plain["loss"], checkpointed["loss"])
    exec(autocast["after"], checkpointed)


def test_a_forward_oom_in_the_users_module_checkpoints_that_block(tmp_path):
    # GIVEN a model of the user's own whose second block runs out of memory in forward
    (tmp_path / "train.py").write_text(textwrap.dedent("""\
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.inp = nn.Linear(64, 512)
                self.block = nn.Linear(512, 512)

            def forward(self, x):
                h = self.inp(x)
                return self.block(h).sum()

        model = Net()
        x = torch.randn(4000, 64)
        out = model(x)
        """))
    run_cli("run", "--quiet", "--capacity", "12MiB", "--json", "r.json", "train.py", cwd=tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    finding = next(f for f in report["findings"] if f["kind"] == "oom")
    assert finding["evidence"]["phase"] == "forward"
    by_title = {r["title"]: r for r in finding["remedies"]}
    # THEN the remedies rewrite the block's line inside forward, where the memory ran out
    checkpoint = by_title["Checkpoint the block at train.py:12"]
    assert checkpoint["before"] == "return self.block(h).sum()"
    assert checkpoint["after"] == ("from torch.utils.checkpoint import checkpoint\n"
                                   "return checkpoint(self.block, h, use_reentrant=False).sum()")
    assert by_title["Run the forward pass in bf16 autocast"]["before"] == "return self.block(h).sum()"


def test_batch_remedy_from_a_completed_step_profile():
    s = Situation(by_category={"parameters": 10 * MIB, "gradients": 10 * MIB, "optimizer_state": 20 * MIB,
                               "activations": 30 * MIB, "other": 0},
                  capacity=100 * MIB, batch_size=64, phase="backward", requested=8 * MIB,
                  per_sample_bytes=1 * MIB)
    fit = batch_that_fits(s)
    # 90 MiB budget - 40 MiB fixed = 50 samples of 1 MiB; 64 = 32 × 2 keeps the effective batch
    assert (fit.largest, fit.size, fit.steps, fit.saves) == (50, 32, 2, 32 * MIB)
    remedy = next(r for r in rank(s) if r.title.startswith("Use batch size"))
    assert remedy.title == "Use batch size 32 and accumulate gradients over 2 steps (now 64)"
    assert remedy.detail.startswith("Measured")


def test_accumulation_keeps_the_effective_batch_or_says_what_it_becomes():
    assert accumulation(2000, 1545) == (1000, 2)
    assert accumulation(2000, 1326) == (1000, 2)
    assert accumulation(96, 40) == (32, 3)
    # A prime batch has no divisor near: the sizes stay equal and the effective batch grows a little.
    size, steps = accumulation(1999, 1545)
    assert (size, steps) == (1000, 2) and size <= 1545
    s = Situation(by_category={"parameters": MIB, "gradients": 0, "optimizer_state": 0, "activations": 30 * MIB,
                               "other": 0}, capacity=20 * MIB, batch_size=1999, phase="forward",
                  requested=MIB)
    remedy = next(r for r in rank(s) if r.title.startswith("Use batch size"))
    assert "The effective batch becomes 1000 × 2 = 2000 (now 1999)" in remedy.detail


def test_del_is_offered_once_and_only_for_what_a_users_name_keeps():
    leftover = {"bytes": 8 * MIB, "category": "activations", "step": 2, "holders": ["out"],
                "site": {"file": "/u/train.py", "line": 9, "function": "<module>"}}
    saved = {"bytes": 8 * MIB, "category": "activations", "step": 3, "holders": ["h"], "site": None}
    batch = {"bytes": 8 * MIB, "category": "other", "step": 3, "holders": ["x"], "site": None}
    unnamed = {"bytes": 8 * MIB, "category": "other", "step": 1, "site": None}
    s = Situation(by_category={"parameters": MIB, "gradients": 0, "optimizer_state": 0,
                               "activations": 24 * MIB, "other": 16 * MIB},
                  phase="forward", step=3, largest=[leftover, dict(leftover), saved, batch, unnamed])
    dels = [r for r in rank(s) if "`del" in r.title]
    # The previous step's output still named `out` can go; this step's activations and input,
    # kept for backward, cannot.
    assert [r.title for r in dels] == ["`del out` once it is used"]
    assert dels[0].saves_bytes == 16 * MIB and "2 tensors, made at train.py:9" in dels[0].detail


def test_the_names_that_keep_tensors_at_a_failure_are_found_from_its_frames():
    import torch

    def step(previous):
        h = torch.ones(64, 64, requires_grad=True).exp()  # this step's own: not asked about
        raise MemoryError(h.shape)

    out = torch.zeros(512, 512)  # the loop keeps the last step's output under its own name
    loose = torch.zeros(3).untyped_storage()  # no tensor of the user's is on it
    try:
        step(out)
    except MemoryError as exc:
        names = names_at_failure(exc.__traceback__, [out.untyped_storage(), loose, None])
    # The outermost name first: the loop's `out`, which `del` must drop, not the argument.
    assert names == [["out"], [], []]


def test_remedies_are_honest_about_what_they_save():
    s = Situation(by_category={"parameters": 10 * MIB, "gradients": 10 * MIB, "optimizer_state": 20 * MIB,
                               "activations": 40 * MIB, "other": 0},
                  capacity=64 * MIB, batch_size=32, phase="forward", requested=4 * MIB,
                  reserved_unallocated=16 * MIB)
    remedies = {r.title: r for r in rank(s)}
    assert remedies["Run the forward pass in bf16 autocast"].saves_bytes == 20 * MIB
    assert "estimate" in remedies["Run the forward pass in bf16 autocast"].detail
    assert remedies["Free gradients before the forward pass: zero_grad(set_to_none=True)"].saves_bytes == 10 * MIB
    assert remedies["Use a lighter optimizer state"].saves_bytes == 10 * MIB  # Adam's state outweighs them
    assert remedies["Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"].saves_bytes == 16 * MIB
    # Without a forward line, no made-up code: the remedy says what to do in words.
    checkpoint = remedies["Checkpoint activations of the repeated blocks"]
    assert checkpoint.before is None and "checkpoint(block" in checkpoint.detail


def test_forward_line_rewrites_only_whole_statements_that_call_a_module():
    line = forward_line.at("t.py", 3, "<module>", "logits = head(model(x))  # train")
    assert forward_line.checkpoint(line) == ("from torch.utils.checkpoint import checkpoint_sequential\n"
                                             "logits = head(checkpoint_sequential(model, 2, x, "
                                             "use_reentrant=False))  # train")
    # checkpoint_sequential takes one input: a model called with two gets no made-up code
    assert forward_line.checkpoint(forward_line.at("t.py", 3, "<module>", "out = model(x, mask)")) is None
    assert forward_line.at("t.py", 3, "<module>", "out = model(") is None  # part of a multi-line call
    assert forward_line.at("t.py", 3, "forward", "h = torch.relu(h)") is None


def test_no_fragmentation_remedy_when_memory_is_really_full():
    s = Situation(by_category={"parameters": MIB, "gradients": 0, "optimizer_state": 0, "activations": MIB,
                               "other": 0}, capacity=4 * MIB, batch_size=4, requested=MIB,
                  reserved_unallocated=MIB // 2)
    assert not any("expandable_segments" in r.title for r in rank(s))


def test_near_capacity_quotes_the_headers_peak_and_marks_an_estimate():
    from oomdoctor.core.timeline import Timeline
    from oomdoctor.diagnosis.detectors import capacity

    t = Timeline(capacity=100 * MIB)
    t.note_peak(95 * MIB, {"activations": 95 * MIB}, None, "between steps 3 and 4", estimated=True)
    [finding] = capacity.detect(t)
    assert finding.bytes == t.peak_bytes
    assert "The peak (between steps 3 and 4) was ~95.00 MiB (an estimate" in finding.detail


def test_a_fragmentation_oom_offers_expandable_segments_once():
    # A CUDA OOM as the session records it, hand-built (no GPU here): 64 MiB reserved but free,
    # in pieces too small for the 20 MiB asked for.
    from oomdoctor.core.timeline import Timeline
    from oomdoctor.diagnosis.detectors import run_detectors

    t = Timeline(device_type="cuda", capacity=1024 * MIB, batch_size=8)
    t.exception = {
        "type": "OutOfMemoryError", "phase": "forward", "step": 3, "frames": [],
        "message": "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 1.00 GiB",
        "live_bytes": 900 * MIB, "largest": [],
        "by_category": {"parameters": 200 * MIB, "gradients": 200 * MIB, "optimizer_state": 400 * MIB,
                        "activations": 100 * MIB, "other": 0},
        "allocator": {"reserved_bytes.all.current": 964 * MIB, "allocated_bytes.all.current": 900 * MIB,
                      "inactive_split_bytes.all.current": 64 * MIB, "num_alloc_retries": 2},
    }
    findings, notes = run_detectors(t)
    assert not notes and [f.kind for f in findings] == ["oom", "fragmentation"]
    remedies = [r.title for f in findings for r in f.remedies]
    assert remedies.count("Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True") == 1
    assert len(remedies) == len(set(remedies))
    assert findings[0].bytes == 20 * MIB and findings[1].bytes == 64 * MIB
