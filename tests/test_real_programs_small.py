"""The instrument of benchmarks/real_programs.py: its launcher counts what a program really did.

The benchmark's verdicts (steps reported vs done, parameter bytes vs real) are only as good as
these counts, so they are checked here on a small real training script in a real subprocess.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_programs  # noqa: E402

SCRIPT = """\
import sys
import torch
from torch import nn

model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))  # 283 parameters, 1132 B
head = nn.Linear(3, 3)  # 12 parameters, 48 B, stepped by a second optimizer
first, second = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(head.parameters(), lr=0.1)
for step in range(6):
    loss = head(model(torch.randn(4, 10))).sum()
    loss.backward()
    first.step()
    second.step()
    print("step", step, flush=True)
print("done")
"""


def launch(tmp_path: Path, limit: int) -> tuple[subprocess.CompletedProcess, dict]:
    (tmp_path / "launch.py").write_text(real_programs.LAUNCHER)
    (tmp_path / "train.py").write_text(SCRIPT)
    seen = tmp_path / "seen.json"
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "launch.py"), str(limit), str(seen), str(tmp_path / "train.py"), "--flag"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    return proc, json.loads(seen.read_text())


def test_launcher_counts_steps_backwards_and_parameter_bytes(tmp_path: Path) -> None:
    # GIVEN a script with two optimizers stepping 6 times each after one backward
    # WHEN it runs through the launcher without a limit
    proc, seen = launch(tmp_path, limit=0)
    # THEN it ran like python, and the counts are what the script did
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "done"
    assert seen == {"optimizer_steps": 12, "optimizers": 2, "backwards": 6, "param_bytes": (283 + 12) * 4}


def test_launcher_stops_after_the_limit_with_exit_code_zero(tmp_path: Path) -> None:
    proc, seen = launch(tmp_path, limit=5)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["step", "0", "step", "1"]  # the 5th step (step 2's first) stopped it
    assert seen["optimizer_steps"] == 5


@pytest.mark.parametrize("truth, expected", [("optimizer", 12), ("optimizer/2", 6), ("backward", 6), ("none", 0)])
def test_expected_steps_follow_the_programs_rule(truth: str, expected: int) -> None:
    program = real_programs.Program("p", "p.py", [], truth)
    assert real_programs.expected_steps(program, {"optimizer_steps": 12, "backwards": 6}) == expected
