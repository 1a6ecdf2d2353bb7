"""The pytest plugin: a project's own tests use the `oomdoctor` fixture to fail when a training loop
leaks memory. Each test here runs a real inner pytest session (pytester) on such a test file."""
from __future__ import annotations

import importlib.metadata

import pytest
# The inner runs share this process; pytester removes the modules they import once each ends. Torch
# modules that register operators at import (torch._dynamo, imported lazily on first use) cannot be
# imported twice: import them here, before any inner run, so that they stay.
import torch._dynamo  # noqa: F401

pytest_plugins = ["pytester"]

LOOP = """import torch

def train(steps, keep=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.Adam(model.parameters())
    for _ in range(steps):
        loss = model(torch.randn(8, 32)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if keep is not None:
            keep.append(loss)
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    """Run an inner pytest on `source` with the plugin loaded explicitly (and no other plugin
    auto-loaded, so the result does not depend on how oomdoctor is installed)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")

    def run(source: str):
        pytester.makepyfile(test_inner=LOOP + source)
        return pytester.runpytest_inprocess("-p", "oomdoctor.pytest_plugin", "-q")

    return run


def test_a_clean_loop_passes(inner):
    result = inner("""
def test_training_does_not_leak(oomdoctor):
    with oomdoctor.steps():
        train(10)
    oomdoctor.assert_no_leak()
    oomdoctor.assert_peak_below("1MiB")
    assert oomdoctor.report.steps_total == 10
""")
    result.assert_outcomes(passed=1)


def test_a_loop_that_keeps_its_losses_fails_with_the_line_and_the_bytes(inner):
    result = inner("""
def test_training_does_not_leak(oomdoctor):
    losses = []
    with oomdoctor.steps():
        train(10, keep=losses)
    oomdoctor.assert_no_leak()
""")
    result.assert_outcomes(failed=1)
    append = LOOP.splitlines().index("            keep.append(loss)") + 1
    result.stdout.fnmatch_lines([
        "*LeakFound: memory leaks across steps:",
        f"*retained-graph:*test_inner.py:{append} in train",
        "*keep.append(loss)",
        "*end of each step:",
        "*step    9 *",
    ])


def test_end_of_step_growth_fails_beyond_the_tolerance(inner):
    # GIVEN a loop that keeps 4 KiB more at the end of every step, with no autograd graph involved
    result = inner("""
import torch

def run(oomdoctor, kept, **tolerance):
    with oomdoctor.steps() as session:
        for _ in range(8):
            kept.append(torch.zeros(1024))
            session.step()
    oomdoctor.assert_no_leak(**tolerance)

def test_strict(oomdoctor):
    run(oomdoctor, [])

def test_tolerant(oomdoctor):
    run(oomdoctor, [], max_growth_bytes="32KiB")
""")
    # THEN 20 KiB of growth after warm-up fails by default and passes under a 32 KiB tolerance
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*end-of-step memory grew by 20.00 KiB from step 2 to step 7 (allowed: 0 B)"])


def test_too_few_steps_to_judge_is_a_failure_not_a_pass(inner):
    result = inner("""
def test_short(oomdoctor):
    with oomdoctor.steps():
        train(2)
    oomdoctor.assert_no_leak()
""")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*saw 2 step(s); judging growth needs at least 4*"])


def test_the_plugin_is_registered_for_pytest_by_the_package():
    try:
        dist = importlib.metadata.distribution("oomdoctor")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("oomdoctor is not installed (pip install -e .)")
    plugins = {ep.name: ep.value for ep in dist.entry_points if ep.group == "pytest11"}
    assert plugins == {"oomdoctor": "oomdoctor.pytest_plugin"}
