"""Shared fixtures. Every test must leave no oomdoctor hook, mode or global state behind."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import torch
except ImportError:  # one line that says what to do, not a traceback per test file
    raise pytest.UsageError(
        f"PyTorch is not installed for {sys.executable}. Install the CPU build first, then the "
        "project: pip install torch==2.13.0 && pip install -e '.[test]' (what .ci/run does).") from None
import torch.nn.modules.module as module_hooks
import torch.optim.optimizer as optimizer_hooks
from torch.utils._python_dispatch import _get_current_dispatch_mode

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"

os.environ.setdefault("COLUMNS", "100")  # rich output compares line by line
# The suite's scripts run on CPU: watch the CPU also on a machine with a GPU (tests/gpu opt out).
os.environ.setdefault("OOMDOCTOR_DEVICE", "cpu")


def _top_saved_tensor_hooks():
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)  # private API
    return top(False) if top is not None else None


def installed_state() -> dict:
    """Everything a session installs globally, as plain values to compare."""
    from oomdoctor.session import Session

    return {
        "session": Session.current(),
        "backward": getattr(torch.autograd.backward, "__module__", None),
        "optimizer_pre_hooks": len(optimizer_hooks._global_optimizer_pre_hooks),
        "optimizer_post_hooks": len(optimizer_hooks._global_optimizer_post_hooks),
        "forward_pre_hooks": len(module_hooks._global_forward_pre_hooks),
        "forward_hooks": len(module_hooks._global_forward_hooks),
        "dispatch_mode": _get_current_dispatch_mode(),
        "saved_tensor_hooks": _top_saved_tensor_hooks(),
    }


@pytest.fixture(autouse=True)
def no_hooks_left_behind():
    before = installed_state()
    yield
    after = installed_state()
    assert after == before, "an oomdoctor session left a hook installed"


def run_cli(*args: str, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 120,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    """`python -m oomdoctor ARGS` in a real subprocess."""
    full_env = {**os.environ, "COLUMNS": "100", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "oomdoctor", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, input=stdin)


def run_python(*args: str, cwd: str | Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Plain `python ARGS`, the reference behaviour for `oomdoctor run`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
