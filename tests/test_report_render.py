"""The terminal report as a user reads it: at the terminal's width (80, 100, 160 columns; 100
when piped), never a title or a fix cut, user text shown as written (no rich markup, no terminal
escape sequences), huge strings cut with a marker, `~` and "Notable steps" explained, and
`oomdoctor report` on stdout."""
from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest
from rich.cells import cell_len

from conftest import REPO
from oomdoctor.report.console import print_report, terminal_width
from oomdoctor.report.html import render_html
from oomdoctor.report.model import Device, ExitInfo, Finding, Location, Remedy, Report, Step
from test_report_load import report_cli

MiB = 2**20
TITLE = ("`self.history['logits']` keeps the autograd graph of every step alive (38 steps, 305.12 MiB), "
         "and memory grows by 8.03 MiB with every optimizer step until the device runs out of memory")
FIX = ("Store `logits.detach()` in `self.history['logits']`, or only the number you need, such as "
       "`logits.argmax(1).eq(labels).sum().item()`, so no autograd graph outlives its step")
AFTER = "self.history['logits'].append(logits.detach().cpu())  # a detached CPU copy: nothing of the graph stays on the GPU"
HOSTILE = "\x1b]52;c;cHduZWQ=\x07\x1b[2J\x1b[H\rpwned\x9b31m"


def _report(exact: bool = True, **kw) -> Report:
    steps = [Step(i, 10 * MiB + i * MiB, 40 * MiB + i * MiB, 11 * MiB + i * MiB, 0.02, exact=exact or i % 2 == 0)
             for i in range(12)]
    finding = Finding("retained-graph", "error", TITLE, "Each step appends `logits` to `self.history`.",
                      Location("/home/user/projects/vision/train.py", 58, "fit", AFTER), 305 * MiB, FIX,
                      [Remedy("Keep a detached copy", 305 * MiB, "", "self.history['logits'].append(logits)", AFTER)])
    fields = dict(device=Device("cpu", "x86_64", None), steps=steps, steps_total=12, peak_bytes=51 * MiB,
                  peak_step=11, findings=[finding],
                  command=["train.py", "--data", "data/[a-z]*.pt", "[/]", "--tag", "[bold red]x[/]"])
    fields.update(kw)
    return Report(**fields)


def _render(report: Report) -> str:
    out = io.StringIO()
    print_report(report, file=out)
    return out.getvalue()


def _unboxed(text: str) -> str:
    """The text without frame characters and whitespace: a wrapped title reads whole again."""
    return re.sub(r"[\s│╭╮╰╯─┃━╇┼]", "", text)


@pytest.mark.parametrize("columns", [80, 100, 160])
def test_the_report_fits_the_width_and_cuts_nothing(monkeypatch, columns):
    # GIVEN a terminal of `columns` columns and a finding with a long title, fix and code
    monkeypatch.setenv("COLUMNS", str(columns))
    text = _render(_report())
    lines = text.splitlines()
    # THEN no line is longer than the terminal, and the frames use its whole width
    assert max(cell_len(line) for line in lines) == columns, [line for line in lines if cell_len(line) > columns]
    # AND the whole title, fix and fixed code are there (wrapped, not cut with "…")
    for whole in (TITLE, FIX, AFTER, "train.py --data 'data/[a-z]*.pt' '[/]' --tag '[bold red]x[/]'"):
        assert _unboxed(whole) in _unboxed(text), whole
    assert "…" not in text


def test_piped_output_is_100_columns_and_a_terminal_gives_its_own_width(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    # GIVEN output to a file: 100 columns
    assert max(cell_len(line) for line in _render(_report()).splitlines()) == 100
    # GIVEN a real terminal (a pseudo-terminal) 123 columns wide: its width
    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 123, 0, 0))
        with os.fdopen(follower, "w", closefd=False) as tty:
            assert terminal_width(tty) == 123
            # AND COLUMNS, when set, wins over the terminal
            monkeypatch.setenv("COLUMNS", "90")
            assert terminal_width(tty) == 90
    finally:
        os.close(leader)
        os.close(follower)


def test_user_text_is_text_not_markup_nor_terminal_sequences():
    # GIVEN rich markup and terminal escape sequences (OSC 52 writes the clipboard, CSI 2J clears
    # the screen) in every string a report carries
    report = _report(exit=ExitInfo(1, f"RuntimeError: [/] {HOSTILE}"), notes=[f"[red]note[/] {HOSTILE}"])
    report.findings[0].detail = f"detail [/bold] {HOSTILE}"
    report.findings[0].location = Location(f"[/]{HOSTILE}.py", 3, f"f{HOSTILE}", f"x = '[/]' {HOSTILE}")
    report.findings[0].remedies[0].before = f"y = 1  # {HOSTILE}"
    report.command.append(HOSTILE)
    # WHEN it is rendered for the terminal and as HTML
    text, html = _render(report), render_html(report)
    # THEN the markup shows as written and no control character gets through
    for written in ("RuntimeError: [/]", "[red]note[/]", "detail [/bold]", "x = '[/]'", "data/[a-z]*.pt"):
        assert written in text, written
    for output in (text, html):
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", output)
        assert "pwned" in output  # the harmless rest of the string stays


def test_huge_strings_are_cut_with_a_marker_and_long_lists_end_with_a_count(tmp_path):
    # GIVEN a saved report with a 16 MB detail, 120 remedies and 80 findings
    report = _report()
    report.findings[0].detail = "x" * (16 * 2**20)
    report.findings[0].remedies *= 120
    report.findings += [Finding("memory-growth", "warning", f"growth {i}", "d") for i in range(79)]
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(report.to_dict()))
    # WHEN `oomdoctor report` renders it
    code, out, err = report_cli("report", str(path), "--html", str(tmp_path / "huge.html"))
    # THEN it renders, bounded, and says what it left out
    assert code == 0, err
    assert _unboxed(f"{16 * 2**20 - 4000:,} more characters not shown") in _unboxed(out)
    assert "110 more remedies not shown" in out and "30 more findings not shown" in out
    assert len(out) < 200_000 and (tmp_path / "huge.html").stat().st_size < 300_000


def test_notable_steps_and_the_tilde_are_explained_where_they_appear(monkeypatch):
    estimated = _render(_report(exact=False))
    assert "Notable steps: first two, peak, largest rises of Δ end, last." in estimated
    assert "~" in estimated.split("Notable steps")[1] and "~ estimated: this step was not watched op by op" in estimated
    # the peak in the header is marked too when its step was estimated
    assert re.search(r"peak +~51\.00 MiB at step 11", estimated)
    exact = _render(_report(exact=True))
    assert "Notable steps:" in exact and "~" not in exact


def test_batch_section_only_when_the_report_has_one():
    plain = _report()
    assert 'id="batch"' not in render_html(plain) and "Batch size" not in _render(plain)
    with_batch = _report(batch={"max_batch_size": 96, "recommended_batch_size": 80, "trials": []})
    assert 'id="batch"' in render_html(with_batch) and "Batch size: largest that fits 96" in _render(with_batch)


def test_report_renders_on_stdout_and_a_closed_pipe_is_quiet(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(_report().to_dict()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
    result = subprocess.run([sys.executable, "-m", "oomdoctor", "report", "r.json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    assert "retained-graph" in result.stdout
    # `| head -1`: the reader leaves after one line; no BrokenPipeError traceback
    piped = subprocess.run(f"{sys.executable} -m oomdoctor report r.json | head -1", shell=True, cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert piped.stdout.startswith("╭─ oomdoctor") and piped.stderr == ""
    # AND the report path imports no torch: it must start fast
    timing = subprocess.run([sys.executable, "-X", "importtime", "-m", "oomdoctor", "report", "r.json", "--quiet"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert timing.returncode == 0 and not re.search(r"\|\s+torch$", timing.stderr, re.M)


def test_a_real_run_reads_whole_at_80_100_and_160_columns(tmp_path):
    # GIVEN a recipe with a retained graph, run for real in an 80-column terminal
    recipe = REPO / "recipes" / "retained_graph_history.py"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80"}
    run = subprocess.run([sys.executable, "-m", "oomdoctor", "run", "--json", "r.json", str(recipe)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    saved = json.loads((tmp_path / "r.json").read_text())
    titles = [f["title"] for f in saved["findings"]] + [f["remedy"] for f in saved["findings"]]
    assert titles
    outputs = {80: run.stderr}
    for columns in (100, 160):  # the same report again, by `oomdoctor report`, in-process
        os.environ["COLUMNS"] = str(columns)
        try:
            code, outputs[columns], _ = report_cli("report", str(tmp_path / "r.json"))
        finally:
            os.environ["COLUMNS"] = "100"
        assert code == 0
    for columns, text in outputs.items():
        # THEN no line is wider than the terminal and every title and fix is there in full
        report_lines = text[text.index("╭─ oomdoctor"):].splitlines()
        assert max(cell_len(line) for line in report_lines) <= columns
        for whole in titles:
            assert _unboxed(whole) in _unboxed(text), (columns, whole)
