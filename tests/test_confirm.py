"""A runtime finding that `oomdoctor lint` also reports at the same line is marked as confirmed."""
from __future__ import annotations

import textwrap

from oomdoctor.diagnosis.confirm import confirm_with_lint
from oomdoctor.report.model import Finding, Location

LOOP = textwrap.dedent("""
    import torch
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    total_loss = 0
    for step in range(10):
        loss = model(torch.randn(2, 4)).mean()
        loss.backward()
        opt.step()
        total_loss += loss
""")


def _finding(path, line, kind="retained-graph"):
    return Finding(kind, "error", "t", "graphs kept.", Location(str(path), line, "<module>"))


def test_same_kind_same_line_is_confirmed(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(LOOP)
    [finding] = confirm_with_lint([_finding(script, 10)])
    assert finding.evidence["confirmed_by_lint"] is True
    assert "oomdoctor lint" in finding.detail


def test_other_lines_kinds_and_missing_files_are_left_alone(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(LOOP)
    findings = [_finding(script, 9), _finding(script, 10, "oom"), _finding(tmp_path / "gone.py", 10)]
    assert confirm_with_lint(findings) == findings
