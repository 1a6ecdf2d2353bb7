"""`%load_ext oomdoctor` in IPython and Jupyter: the `%%oomdoctor` cell magic and `%oomdoctor` line
magic, driven through IPython's real shell (`InteractiveShell.run_cell`), as a notebook runs cells."""
from __future__ import annotations

import builtins
import json
import sys

import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

SETUP = """
import torch
torch.manual_seed(0)
model = torch.nn.Linear(64, 64)
opt = torch.optim.SGD(model.parameters(), lr=0.1)

def train(steps, batch=8):
    for _ in range(steps):
        loss = model(torch.randn(batch, 64)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()
"""


@pytest.fixture(scope="module")
def shell():
    # The shell replaces __main__ and adds names to builtins: put them back for the other tests.
    main, names = sys.modules["__main__"], set(vars(builtins))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "oomdoctor.notebook")
    assert ip.run_cell(SETUP).success
    yield ip
    InteractiveShell.clear_instance()
    sys.modules["__main__"] = main
    for name in set(vars(builtins)) - names:
        delattr(builtins, name)


def run(shell, cell):
    """Run a cell as a notebook does; what it displayed, printed and returned."""
    with capture_output() as captured:
        result = shell.run_cell(cell)
    return result, captured


def test_load_ext_oomdoctor_registers_the_magics(shell):
    # `%load_ext oomdoctor` calls oomdoctor.load_ipython_extension ("no load function" without it)
    assert shell.extension_manager.load_extension("oomdoctor") is None
    assert "oomdoctor" in shell.magics_manager.magics["cell"]
    assert "oomdoctor" in shell.magics_manager.magics["line"]


def test_cell_magic_displays_the_report_under_the_cell_and_writes_json(shell, tmp_path):
    # WHEN a cell with three optimizer steps runs under %%oomdoctor
    path = tmp_path / "cell.json"
    result, captured = run(shell, f"%%oomdoctor --json {path}\ntrain(3)")
    # THEN the report is displayed once: rich HTML for Jupyter, text for a terminal IPython
    assert result.success, result.error_in_exec
    [output] = captured.outputs
    assert "Memory per step" in output.data["text/plain"] and "steps     3" in output.data["text/plain"]
    assert output.data["text/html"].startswith("<pre") and "<span style=" in output.data["text/html"]
    # AND the cell's value is still the cell's value, as with %%time
    assert isinstance(result.result, float)
    assert json.loads(path.read_text())["steps_total"] == 3


def test_line_magic_runs_one_statement(shell, tmp_path):
    path = tmp_path / "line.json"
    result, captured = run(shell, f"%oomdoctor --quiet --json={path} train(4, batch=2)")
    assert result.success, result.error_in_exec
    assert captured.outputs == []  # --quiet: only the file
    assert json.loads(path.read_text())["steps_total"] == 4
    assert isinstance(result.result, float)


def test_out_of_memory_in_a_cell_shows_the_post_mortem_then_the_traceback(shell):
    # GIVEN a capacity that fits batches of 8 but not a batch of 4096
    result, captured = run(shell, "%%oomdoctor --capacity 256KiB\ntrain(2)\ntrain(1, batch=4096)")
    # THEN the cell fails with the real error, shown by IPython as usual
    assert isinstance(result.error_in_exec, torch.OutOfMemoryError)
    assert "OutOfMemoryError" in captured.stdout
    # AND the report was displayed, with the two steps that fit and the oom finding
    [output] = captured.outputs
    text = output.data["text/plain"]
    assert "ended     OutOfMemoryError" in text and "1. oom ·" in text and "steps     2" in text
    # AND the capacity is gone with the cell: the next cell allocates freely
    assert run(shell, "big = torch.zeros(1024 * 1024)")[0].success


def test_bad_options_are_usage_errors_and_run_nothing(shell):
    for cell in ("%%oomdoctor --capacity lots\nran = True", "%%oomdoctor --fast\nran = True",
                 "%%oomdoctor train(1)\nran = True", "%oomdoctor --quiet"):
        shell.user_ns.pop("ran", None)
        result, captured = run(shell, cell)
        assert not result.success and "UsageError" in captured.stderr + captured.stdout, cell
        assert "ran" not in shell.user_ns


def test_a_syntax_error_is_reported_before_any_session_starts(shell):
    result, _ = run(shell, "%%oomdoctor\nx = (")
    assert isinstance(result.error_in_exec, SyntaxError)
