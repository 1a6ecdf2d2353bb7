"""`oomdoctor run --gpu CARD`: from a CPU run, whether the run would fit a GPU you do not have,
marked as a prediction that no GPU has validated."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import RECIPES


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oomdoctor", "run", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_a_cpu_run_predicts_the_fit_on_a_named_card(tmp_path):
    result = run("--gpu", "T4-16GB", "--steps", "3", "--json", "r.json", str(RECIPES / "train_mlp.py"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    gpu = report["aggregates"]["gpu"]
    assert gpu["name"] == "T4-16GB" and gpu["predicted"] is True and gpu["validated"] is False
    assert gpu["reserved_peak_bytes"] == report["aggregates"]["predicted_cuda_reserved_peak_bytes"] > 0
    # The allocator model rounds up: it never predicts less than the tensors the run held at its peak
    assert gpu["reserved_peak_bytes"] >= report["peak_bytes"]
    assert gpu["fits"] and gpu["headroom_bytes"] == gpu["allocator_bytes"] - gpu["reserved_peak_bytes"]
    assert any("Predicted for T4-16GB (unvalidated)" in note for note in report["notes"])


def test_an_unknown_card_is_one_line_and_exit_2_before_the_script(tmp_path):
    result = run("--gpu", "Z9", str(RECIPES / "train_mlp.py"), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "unknown card 'Z9'" in result.stderr and "A100-40GB" in result.stderr
