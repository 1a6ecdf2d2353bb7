"""The Python API: @oomdoctor.watch and oomdoctor.track(), and the JSON report they write."""
from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch
from torch import nn

import oomdoctor
from oomdoctor.report.json import load_json, render_json
from oomdoctor.report.model import Report
from conftest import run_cli, run_python


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))


def test_watch_makes_one_step_per_call_and_reports_on_stop(tmp_path, capsys):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @oomdoctor.watch(json=str(tmp_path / "w.json"))
    def train_step(x):
        loss = model(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(5):
        train_step(torch.randn(8, 32))
    report = train_step.stop()
    assert report.steps_total == 5
    assert "oomdoctor" in capsys.readouterr().err  # printed to stderr, stdout untouched
    saved = json.loads((tmp_path / "w.json").read_text())
    assert saved["schema"] == "oomdoctor.report/1" and saved["steps_total"] == 5


def test_bare_watch_works_for_an_inference_step():
    model = _model().eval()

    @oomdoctor.watch
    def predict(x):
        with torch.no_grad():
            return model(x)

    for _ in range(3):
        predict(torch.randn(4, 32))
    predict.session.quiet = True
    assert predict.stop().steps_total == 3


def test_track_prints_at_exit_unless_quiet(capsys):
    with oomdoctor.track():
        torch.ones(100)
    printed = capsys.readouterr()
    assert "At the peak" in printed.err and printed.out == ""
    with oomdoctor.track(quiet=True):
        torch.ones(100)
    assert capsys.readouterr().err == ""


def test_watch_and_track_inside_a_running_session_join_it(tmp_path):
    # GIVEN a script whose step is decorated and whose loop is also wrapped in track()
    (tmp_path / "joined.py").write_text(textwrap.dedent("""
        import torch, oomdoctor
        model = torch.nn.Linear(4, 4)
        @oomdoctor.watch
        def step(x):
            model(x).sum().backward()
        with oomdoctor.track() as session:
            for _ in range(3):
                step(torch.randn(2, 4))
    """))
    # WHEN it runs under `oomdoctor run`
    result = run_cli("run", "--json", "r.json", "joined.py", cwd=tmp_path)
    # THEN there is one report (the run's) with the decorated calls as its steps
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("╭─ oomdoctor") == 1
    assert json.loads((tmp_path / "r.json").read_text())["steps_total"] == 3


def test_json_report_round_trips_unchanged(tmp_path):
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    with oomdoctor.track(quiet=True, json=str(tmp_path / "r.json")) as session:
        for _ in range(4):
            model(torch.randn(8, 32)).mean().backward()
            opt.step()
            opt.zero_grad()
    loaded = load_json(tmp_path / "r.json")
    assert loaded == session.report()
    assert render_json(Report.from_dict(json.loads(render_json(loaded)))) == render_json(loaded)


def test_json_report_has_the_documented_fields(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with oomdoctor.track(quiet=True, json=str(tmp_path / "r.json")):
        for _ in range(2):
            model(torch.randn(8, 32)).mean().backward()
            opt.step()
    data = json.loads((tmp_path / "r.json").read_text())
    assert {"schema", "device", "steps", "steps_total", "peak_bytes", "findings", "exit"} <= set(data)
    assert set(data["device"]) >= {"type", "name", "capacity_bytes", "simulated"}
    step = data["steps"][0]
    assert set(step) >= {"index", "start_bytes", "peak_bytes", "end_bytes", "duration_s", "by_category"}
    assert set(step["by_category"]) == {"parameters", "gradients", "optimizer_state", "activations", "other"}
    assert data["exit"] == {"code": 0, "exception": None}


def test_saved_report_renders_again(tmp_path):
    with oomdoctor.track(quiet=True, json=str(tmp_path / "r.json")) as session:
        model = _model()
        model(torch.randn(2, 32)).sum().backward()
        session.step()
    result = run_cli("report", str(tmp_path / "r.json"))
    assert result.returncode == 0
    assert "At the peak" in result.stdout + result.stderr


def test_a_long_run_keeps_a_bounded_window_of_steps():
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with oomdoctor.track(quiet=True) as session:
        for _ in range(2000):
            model(torch.ones(1, 4)).sum().backward()
            opt.step()
    report = session.report()
    assert report.steps_total == 2000
    assert len(report.steps) <= 256
    assert report.steps[0].index == 0 and report.steps[-1].index == 1999
    assert len(session.timeline.series) <= 512


def test_run_and_report_write_the_html_report(tmp_path):
    (tmp_path / "s.py").write_text("import torch\nm = torch.nn.Linear(8, 8)\nm(torch.ones(2, 8)).sum().backward()\n")
    assert run_cli("run", "--quiet", "--json", "r.json", "--html", "r.html", "s.py", cwd=tmp_path).returncode == 0
    page = (tmp_path / "r.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "<svg" in page
    assert run_cli("report", "--quiet", "r.json", "--html", "again.html", cwd=tmp_path).returncode == 0
    assert "<svg" in (tmp_path / "again.html").read_text()


STEP = """
import os, sys, torch, oomdoctor
model = torch.nn.Linear(4, 4)
@oomdoctor.watch(json="r.json")
def step(x):
    model(x).sum().backward()
"""


def _program(tmp_path, body: str) -> None:
    (tmp_path / "prog.py").write_text(STEP + textwrap.dedent(body))


def test_stop_inside_a_run_returns_the_running_report_and_the_run_goes_on(tmp_path):
    # GIVEN a decorated step whose stop() is called in the middle of the program
    _program(tmp_path, """
        for _ in range(3):
            step(torch.randn(2, 4))
        print(step.stop().steps_total)
        for _ in range(2):
            step(torch.randn(2, 4))
    """)
    # WHEN it runs under `oomdoctor run`
    result = run_cli("run", "--json", "run.json", "prog.py", cwd=tmp_path)
    # THEN stop() gave the report so far, and the run's report has every step
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3\n"
    assert json.loads((tmp_path / "run.json").read_text())["steps_total"] == 5


def test_an_uncaught_exception_ends_up_in_the_watch_report_and_its_traceback_is_pythons(tmp_path):
    # GIVEN a decorated step that raises on its third call, outside `oomdoctor run`
    _program(tmp_path, """
        for i in range(3):
            if i == 2:
                os.chdir("..")  # the report still goes where the program started
            step(torch.randn(2, 4) if i < 2 else None)
    """)
    # WHEN the program runs with plain python
    result = run_python("prog.py", cwd=tmp_path)
    # THEN it fails as python would, with no oomdoctor frame in the traceback
    assert result.returncode == 1
    traceback = result.stderr[:result.stderr.index("╭─ oomdoctor")]
    assert "oomdoctor" not in traceback and traceback.strip().endswith("TypeError: linear(): argument 'input' "
                                                                      "(position 1) must be Tensor, not NoneType")
    # AND the report, written to the path as given from where the program started, records how it ended
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["exit"]["code"] == 1 and report["exit"]["exception"].startswith("TypeError: linear()")
    assert report["steps_total"] == 3


def test_ctrl_c_under_watch_is_reported_as_python_exits(tmp_path):
    _program(tmp_path, "step(torch.randn(2, 4))\nraise KeyboardInterrupt\n")
    result = run_python("prog.py", cwd=tmp_path)
    assert result.returncode == -2  # python dies of SIGINT, exit status 130 in a shell
    assert json.loads((tmp_path / "r.json").read_text())["exit"]["code"] == 130


@pytest.mark.parametrize("ending, code", [("sys.exit(3)", 3), ("sys.exit('no more data')", 1), ("sys.exit()", 0)])
def test_sys_exit_after_watched_steps_is_the_reports_exit_code(tmp_path, ending, code):
    # GIVEN a watched program that ends with sys.exit (no excepthook sees it, atexit is not told)
    _program(tmp_path, f"step(torch.randn(2, 4))\n{ending}\n")
    # WHEN it runs with plain python
    result = run_python("prog.py", cwd=tmp_path)
    # THEN python's exit status stands, and the report says the same
    assert result.returncode == code, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["exit"]["code"] == code


def test_a_forked_child_of_a_watched_program_does_not_report(tmp_path):
    _program(tmp_path, """
        for _ in range(3):
            step(torch.randn(2, 4))
        pid = os.fork()
        if pid == 0:
            step(torch.randn(2, 4))
            sys.exit(0)
        os.waitpid(pid, 0)
    """)
    result = run_python("prog.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("╭─ oomdoctor") == 1
    assert json.loads((tmp_path / "r.json").read_text())["steps_total"] == 3


def test_track_writes_relative_paths_where_the_block_started(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with oomdoctor.track(quiet=True, json="t.json"):
        os.chdir("elsewhere")
        torch.ones(10)
    assert (tmp_path / "t.json").exists() and not (tmp_path / "elsewhere" / "t.json").exists()
