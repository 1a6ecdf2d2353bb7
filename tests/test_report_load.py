"""`oomdoctor report FILE`: whatever the file holds, the answer is a rendered report on stdout or
one line `oomdoctor: error: ...` naming what is wrong, with exit code 2, never a traceback.

Most cases run the CLI in-process (`oomdoctor.cli.main`) to stay fast; a few run it for real."""
from __future__ import annotations

import copy
import io
import json
import os
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from oomdoctor.cli import main
from oomdoctor.errors import BadInput
from oomdoctor.report.console import print_report
from oomdoctor.report.html import render_html
from oomdoctor.report.json import MAX_REPORT_BYTES, load_json
from oomdoctor.report.model import Device, ExitInfo, Finding, Location, Remedy, Report, Step

MiB = 2**20
DEEP = "__deep__"  # stands for a value nested 100,000 levels deep (json.dumps cannot write one)


def valid_report() -> dict:
    """A report using every field the schema has: steps, findings with location and remedies,
    batch, ranks, notes, an exception."""
    steps = [Step(i, 10 * MiB + i, 30 * MiB, 11 * MiB + i, 0.01, {"parameters": MiB, "gradients": MiB,
                  "optimizer_state": 2 * MiB, "activations": 20 * MiB, "other": i}, exact=i != 1)
             for i in range(3)]
    finding = Finding("retained-graph", "error", "`losses` keeps every graph", "grows 1 MiB a step",
                      Location("train.py", 12, "train", "losses.append(loss)"), 3 * MiB, "Append `loss.item()`.",
                      [Remedy("Keep a float", 3 * MiB, "no graph", "losses.append(loss)", "losses.append(loss.item())")],
                      {"holder": "losses", "steps_alive": 3})
    rank = Report(Device("cpu", "x86_64", None), steps=steps[:1], steps_total=1, peak_bytes=30 * MiB, rank=1)
    report = Report(
        device=Device("cuda", "Test GPU", 8 * 1024 * MiB, simulated=True, index=0), steps=steps, steps_total=3,
        peak_bytes=30 * MiB, peak_step=2, findings=[finding], exit=ExitInfo(1, "RuntimeError: boom"),
        command=["train.py", "--lr", "0.1"], duration_s=1.5, aggregates={"steps_total": 3},
        batch={"max_batch_size": 96, "recommended_batch_size": 80, "trials": [
            {"batch_size": 64, "fits": True, "peak_bytes": 500 * MiB, "seconds": 1.5, "source": "measured"}]},
        ranks=[rank], rank=0, notes=["oomdoctor: warning: a note"])
    return report.to_dict()


def report_cli(*args: str) -> tuple[int, str, str]:
    """`oomdoctor ARGS` in this process: (exit code, stdout, stderr). An uncaught exception (a
    traceback in real life) propagates and fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            return int(exc.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def write(folder: Path, data) -> Path:
    text = data if isinstance(data, str) else json.dumps(data)
    text = text.replace(json.dumps(DEEP), "[" * 100_000 + "]" * 100_000)
    path = folder / "r.json"
    path.write_text(text, encoding="utf-8")
    return path


def assert_rendered_or_one_line(path: Path, html: Path, field: str | None = None) -> str:
    """Exit 0 with the report on stdout and HTML written, or exit 2 with one line naming the file."""
    code, out, err = report_cli("report", str(path), "--html", str(html))
    if code == 0:
        assert err == "" and "oomdoctor" in out and html.read_text(encoding="utf-8").endswith("</html>\n")
        assert "\x1b" not in out
        return ""
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"oomdoctor: error: {path}"), err
    if field:
        assert field in lines[0], (field, lines[0])
    return lines[0]


def paths(value, prefix=(), items=None):
    """Every place in a JSON value, as a tuple of keys and indices; in lists, only the first
    `items` items (all when None): the others have the same schema."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key), items)
    elif isinstance(value, list):
        for i, item in enumerate(value[:items]):
            yield from paths(item, (*prefix, i), items)


def replaced(data, where, value):
    data = copy.deepcopy(data)
    target = data
    for key in where[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[where[-1]]
    else:
        target[where[-1]] = value
    return data


_DELETE = object()
BAD = [None, True, -1, 2**64, 1.5, float("nan"), -float("inf"), "x", [], {"a": 1}, DEEP, _DELETE]


def test_every_field_with_every_wrong_value_is_rendered_or_one_line(tmp_path):
    # GIVEN a valid report, and each place in it replaced by each of BAD (or removed)
    base = valid_report()
    outcomes = {"rendered": 0, "error": 0}
    for where in list(paths(base, items=1))[1:]:
        for value in BAD:
            if value is _DELETE and isinstance(where[-1], int):
                continue
            path = write(tmp_path, replaced(base, where, value))
            # WHEN it is loaded and rendered as `oomdoctor report` does (in-process, without the
            # command line parsing that the tests above and below cover)
            try:
                report = load_json(path)
            except BadInput as exc:
                # THEN it is refused in one line that names the file and the top-level field
                message = str(exc)
                assert "\n" not in message and message.startswith(str(path)), message
                if where[0] != "schema" and value != DEEP:
                    assert str(where[0]) in message, (where, message)
                outcomes["error"] += 1
                continue
            # OR it renders, in the terminal and as HTML
            out = io.StringIO()
            print_report(report, file=out)
            assert "oomdoctor" in out.getvalue() and render_html(report).endswith("</html>\n")
            outcomes["rendered"] += 1
    # (both outcomes occur: wrong types are refused, extra or missing optional data is fine)
    assert outcomes["error"] > 400 and outcomes["rendered"] > 100, outcomes


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(["[/]", "[bold]x", "\x1b]52;c;aGk=\x07", "\x1b[2J", "\ud800", DEEP]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_are_rendered_or_one_line(tmp_path_factory, data):
    # GIVEN a valid report with one to three places replaced by any JSON value, or removed
    report = valid_report()
    folder = tmp_path_factory.mktemp("mutant")
    for _ in range(data.draw(st.integers(1, 3))):
        places = [p for p in paths(report) if p]
        if not places:
            break
        where = data.draw(st.sampled_from(places))
        value = data.draw(JSON | st.just(_DELETE) if not isinstance(where[-1], int) else JSON)
        report = replaced(report, where, value)
    # THEN the CLI renders it or refuses it in one line
    assert_rendered_or_one_line(write(folder, report), folder / "r.html")


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("  \n", "is empty"),
    ("{", "is not JSON"),
    ("[1, 2]", "not an oomdoctor report: it holds a list"),
    ('{"a": 1}', 'not an oomdoctor report (no "schema"'),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"schema": "oomdoctor.report/1", "device": {"type": "cpu", "name": "x", "capacity_bytes": 1' + "0" * 5000
     + "}}", "r.json"),
    ('{"schema": "oomdoctor.batch/1", "max_batch_size": 4}', "a batch-size result"),
    ('{"schema": "oomdoctor.report/1", "device": {"type": "cpu", "name": "x", "capacity_bytes": NaN}}',
     "device.capacity_bytes must be an integer, got NaN"),
    ('{"schema": "oomdoctor.report/1", "device": {"type": "cpu", "name": "x", "capacity_bytes": null}, '
     '"duration_s": Infinity}', "duration_s must be a finite number"),
])
def test_broken_files_say_what_is_wrong_in_one_line(tmp_path, text, message):
    code, out, err = report_cli("report", str(write(tmp_path, text)))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_report_of_a_newer_version_says_so_once(tmp_path):
    # GIVEN a report written by a later oomdoctor, with a schema this one does not know
    data = valid_report()
    data["schema"] = "oomdoctor.report/2"
    code, _, err = report_cli("report", str(write(tmp_path, data)))
    # THEN the one line says it comes from a newer version, and says it once
    assert code == 2
    assert err.count("newer oomdoctor") == 1 and err.count("not an oomdoctor report") == 0, err
    assert "oomdoctor.report/2" in err and "upgrade" in err


def test_a_wrong_field_is_named_with_its_place(tmp_path):
    data = valid_report()
    data["steps"][1]["peak_bytes"] = "12"
    data["findings"][0]["location"]["line"] = [3]
    _, _, err = report_cli("report", str(write(tmp_path, data)))
    assert err.strip() == f"oomdoctor: error: {tmp_path / 'r.json'}: steps[1].peak_bytes must be an integer, got a string"


def test_what_is_not_a_regular_file_or_too_large_is_refused_without_reading_it(tmp_path):
    (tmp_path / "folder.json").mkdir()
    os.mkfifo(tmp_path / "fifo.json")  # reading a FIFO nobody writes would hang
    with open(tmp_path / "big.json", "wb") as big:
        big.truncate(MAX_REPORT_BYTES + 1)  # sparse: no disk used
    for name, message in (("folder.json", "is a folder"), ("fifo.json", "not a regular file"),
                          ("big.json", "larger than 32 MiB"), ("missing.json", "no such file")):
        code, _, err = report_cli("report", str(tmp_path / name))
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    code, _, err = report_cli("report", "/dev/zero")
    assert code == 2 and "not a regular file" in err


def test_unknown_fields_of_a_later_minor_version_are_ignored(tmp_path):
    data = valid_report()
    data["new_field"] = {"anything": [1, 2]}
    data["steps"][0]["new_step_field"] = "x"
    code, out, _ = report_cli("report", str(write(tmp_path, data)))
    assert code == 0 and "retained-graph" in out


def test_real_processes_give_one_line_and_exit_2(tmp_path):
    # The in-process runs above are the bulk; these check the real entry point the user runs.
    data = valid_report()
    data["steps"][0]["index"] = '"><script>document.title=1</script>'
    (tmp_path / "bad.json").write_text(json.dumps(data))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "empty.json").write_text("")
    for name in ("bad.json", "deep.json", "empty.json"):
        result = run_cli("report", name, "--html", "out.html", cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert re.fullmatch(r"oomdoctor: error: [^\n]+\n", result.stderr), result.stderr
    assert not (tmp_path / "out.html").exists()


def test_what_oomdoctor_writes_loads_back_unchanged(tmp_path):
    # GIVEN the report of a real (CPU) run with a retained graph, under the strict loader
    import torch

    import oomdoctor

    model = torch.nn.Linear(32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    with oomdoctor.track(quiet=True, json=str(tmp_path / "r.json")) as session:
        for _ in range(6):
            loss = model(torch.randn(8, 32)).pow(2).mean()
            losses.append(loss)  # keeps every graph
            opt.zero_grad()
            loss.backward()
            opt.step()
    # THEN the saved JSON passes every check and is the same report
    assert load_json(tmp_path / "r.json") == Report.from_dict(session.report().to_dict())
