"""Bad input gets one clear line and exit code 2, never a traceback, and loses nothing."""
from __future__ import annotations

import json

import pytest

from conftest import RECIPES, run_cli


def _one_line_error(result, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("oomdoctor: error: ")
    return lines[0]


def test_missing_script(tmp_path):
    assert "no such file" in _one_line_error(run_cli("run", "nope.py", cwd=tmp_path))


def test_script_is_a_folder(tmp_path):
    assert "folder" in _one_line_error(run_cli("run", str(tmp_path)))


def test_unknown_module(tmp_path):
    assert "no module named" in _one_line_error(run_cli("run", "-m", "no_such_mod_xyz", cwd=tmp_path))


@pytest.mark.parametrize("size", ["12zz", "-5", "0", "GiB", ""])
def test_bad_capacity(tmp_path, size):
    (tmp_path / "s.py").write_text("print('ran')\n")
    result = run_cli("run", "--capacity", size, "s.py", cwd=tmp_path)
    assert "ran" not in result.stdout  # the script must not run with a bad option
    assert "size" in _one_line_error(result)


def test_unknown_option(tmp_path):
    (tmp_path / "s.py").write_text("print('ran')\n")
    line = _one_line_error(run_cli("run", "--bogus", "s.py", cwd=tmp_path))
    assert "--bogus" in line


def test_syntax_error_is_shown_like_python_then_one_line(tmp_path):
    (tmp_path / "bad.py").write_text("x = 1\ndef f(:\n    pass\n")
    result = run_cli("run", "bad.py", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert 'bad.py", line 2' in result.stderr and "SyntaxError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("oomdoctor: error: ")


def test_report_folder_missing_fails_before_running(tmp_path):
    (tmp_path / "s.py").write_text("print('ran')\n")
    result = run_cli("run", "--json", "missing/dir/r.json", "s.py", cwd=tmp_path)
    assert "ran" not in result.stdout
    assert "does not exist" in _one_line_error(result)


def test_report_of_a_file_that_is_not_a_report(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "y.json").write_text("{not json")
    assert "not an oomdoctor report" in _one_line_error(run_cli("report", str(tmp_path / "x.json")))
    assert "not JSON" in _one_line_error(run_cli("report", str(tmp_path / "y.json")))
    assert "no such file" in _one_line_error(run_cli("report", str(tmp_path / "z.json")))


def test_html_path_that_cannot_be_written_keeps_the_report_already_written(tmp_path):
    (tmp_path / "s.py").write_text("import torch\nx = torch.ones(10)\n")
    assert run_cli("run", "--quiet", "--json", "r.json", "s.py", cwd=tmp_path).returncode == 0
    before = (tmp_path / "r.json").read_text()
    result = run_cli("report", "r.json", "--html", "no/such/dir/r.html", cwd=tmp_path)
    _one_line_error(result)
    assert (tmp_path / "r.json").read_text() == before


def test_help_works_for_every_command():
    for command in ([], ["run"], ["report"]):
        result = run_cli(*command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


def test_python_dash_m_oomdoctor_runs_the_quickstart_recipe():
    result = run_cli("run", str(RECIPES / "train_mlp.py"), "--steps", "5")
    assert result.returncode == 0, result.stderr
    assert "mean loss" in result.stdout
    assert "At the peak" in result.stderr


def test_fail_on_unknown_kind_is_a_usage_error(tmp_path):
    (tmp_path / "s.py").write_text("print('ran')\n")
    line = _one_line_error(run_cli("run", "--fail-on", "retained-graph,leakz", "s.py", cwd=tmp_path))
    assert "leakz" in line


def test_fail_on_turns_a_finding_into_exit_1(tmp_path):
    # A run that peaks at ~95 % of its (simulated) capacity gets a near-capacity finding.
    (tmp_path / "s.py").write_text("import torch\nx = torch.empty(950 * 1024, dtype=torch.uint8)\nprint('ran')\n")
    ok = run_cli("run", "--quiet", "--capacity", "1MiB", "s.py", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout == "ran\n"
    failing = run_cli("run", "--quiet", "--capacity", "1MiB", "--fail-on", "near-capacity", "s.py", cwd=tmp_path)
    assert failing.returncode == 1 and failing.stdout == "ran\n"
    assert "near-capacity (--fail-on)" in failing.stderr


def test_bad_device(tmp_path):
    (tmp_path / "s.py").write_text("print('ran')\n")
    line = _one_line_error(run_cli("run", "--device", "tpu9", "s.py", cwd=tmp_path))
    assert "not a device" in line
