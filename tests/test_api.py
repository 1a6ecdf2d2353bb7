"""The Python API: @oomdoctor.watch and oomdoctor.track(), and the JSON report they write."""
from __future__ import annotations

import json
import textwrap

import torch
from torch import nn

import oomdoctor
from oomdoctor.report.json import load_json, render_json
from oomdoctor.report.model import Report
from conftest import run_cli


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
