"""The HTML report: one self-contained file that loads nothing, escapes the user's strings, draws
one bar group per step, and opens in a real browser without a single console message."""
from __future__ import annotations

import io
import re
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from torch import nn

import oomdoctor
from oomdoctor.errors import BadInput
from oomdoctor.report.console import print_report
from oomdoctor.report.html import render_html, write_html
from oomdoctor.report.model import CATEGORIES, Device, ExitInfo, Finding, Location, Remedy, Report, Step
from oomdoctor.report.svg import COLORS, STACK
from oomdoctor.sizes import format_bytes
from conftest import REPO

MiB = 2**20
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium or chromium-browser binary (Debian: apt-get install -y chromium)")


def _steps(indices, leak=8 * MiB) -> list[Step]:
    out = []
    for i in indices:
        kept = leak * i
        by_category = {"parameters": 40 * MiB, "gradients": 40 * MiB, "optimizer_state": 80 * MiB,
                       "activations": 200 * MiB, "other": kept}
        start = 160 * MiB + kept
        out.append(Step(i, start, sum(by_category.values()), start + leak, 0.05, by_category))
    return out


def _report(steps: list[Step] | None = None, capacity: int | None = 1024 * MiB, **kw) -> Report:
    steps = _steps(range(5)) if steps is None else steps
    peak = max(steps, key=lambda s: s.peak_bytes, default=None)
    fields = dict(
        device=Device("cuda", "Test GPU", capacity, simulated=True, index=0),
        steps=steps, steps_total=len(steps),
        peak_bytes=peak.peak_bytes if peak else 0, peak_step=peak.index if peak else None,
        peak_by_category=dict(peak.by_category) if peak else {c: 0 for c in CATEGORIES},
        findings=[
            Finding("missing-no-grad", "warning", "Validation forward builds a graph", "saved activations",
                    Location("train.py", 91, "evaluate", "logits = model(x)"), 200 * MiB,
                    "Use `torch.inference_mode()`."),
            Finding("retained-graph", "error", "`total_loss` keeps every graph alive", "grows by 8 MiB a step",
                    Location("train.py", 57, "train", "total_loss += loss"), 40 * MiB, "Add the float.",
                    [Remedy("Accumulate a Python float", 40 * MiB, "", "total_loss += loss",
                            "total_loss += loss.item()")]),
        ],
        exit=ExitInfo(1, "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB."),
        accounting="cuda-allocator", command=["train.py", "--batch-size", "64"],
        batch={"max_batch_size": 96, "recommended_batch_size": 80, "trials": [
            {"batch_size": 64, "fits": True, "peak_bytes": 500 * MiB, "seconds": 1.5, "source": "measured"},
            {"batch_size": 128, "fits": False, "peak_bytes": 1100 * MiB, "seconds": 0.2, "source": "predicted"}]},
        notes=["oomdoctor: warning: NVML is not available"],
    )
    fields.update(kw)
    return Report(**fields)


def _step_groups(html: str) -> int:
    return len(re.findall(r'<g class="step[ "]', html))


def test_report_shows_every_part_a_user_reads():
    # GIVEN a run with a leak, an OOM, two findings, a batch search and a note
    html = render_html(_report())
    # THEN the header, the chart, the breakdown, the findings, the batch sizes and the note are there
    for text in ("train.py --batch-size 64", "Test GPU", "cuda:0", "1.00 GiB", ">simulated<",
                 "CUDA caching allocator", "exit 1", "OutOfMemoryError: CUDA out of memory",
                 '<svg class="timeline"', 'id="breakdown"', "total_loss += loss.item()",
                 "train.py:57</code> in <code>train", "saves 40.00 MiB", ">96<", ">80<", "out of memory",
                 "NVML is not available"):
        assert text in html, text
    # AND the error comes before the warning even though the warning has more bytes at stake
    assert html.index("keeps every graph alive") < html.index("Validation forward builds a graph")
    # AND `backticked` code in titles and remedies shows as code
    assert "<code>total_loss</code> keeps" in html and "<code>torch.inference_mode()</code>" in html


def test_nothing_is_loaded_from_the_network():
    # GIVEN a finding whose text carries markup that would load a remote image if it were not escaped
    report = _report()
    report.findings[0].detail = '<img src="https://evil.example/x.png"> <link href="//cdn.example/x.css">'
    html = render_html(report)
    # THEN no attribute, CSS url() or @import points anywhere: the file is all there is
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"url\(|@import", html, re.I)
    # AND the page forbids network loads even for something we missed
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_user_strings_are_escaped():
    # GIVEN file names, code, a command and an exception full of markup
    report = _report()
    report.findings[1].location = Location('<script>alert(1)</script>.py', 3, "f<iframe>", 'if a < b and "</pre>":')
    report.findings[1].remedies[0].before = "x = '<marquee>bold</marquee>'"
    report.findings[1].title = "`<blink>`"
    report.command = ["run.py", "--tag", "<svg onload=alert(2)>"]
    report.exit = ExitInfo(1, "RuntimeError: <object>boom</object> & more")
    report.notes = ["<embed>note"]
    html = render_html(report)
    # THEN none of it is markup: only our own script tag exists, and the text shows as written
    assert html.count("<script") == 1
    for raw in ("<iframe", '"</pre>"', "<marquee", "<blink", "<svg onload", "<object", "<embed"):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.py:3" in html
    assert "if a &lt; b and &quot;&lt;/pre&gt;&quot;:" in html
    assert "RuntimeError: &lt;object&gt;boom&lt;/object&gt; &amp; more" in html


@pytest.mark.parametrize("count", [1, 40])
def test_one_bar_group_per_step(count):
    html = render_html(_report(_steps(range(count))))
    assert _step_groups(html) == count
    assert html.count("<title>step ") == count  # a tooltip per step
    assert 'class="gap"' not in html


def test_a_window_of_a_long_run_shows_where_steps_were_left_out():
    # GIVEN the first 16 and the latest 240 steps of a 10,000-step run
    steps = _steps(list(range(16)) + list(range(9760, 10000)), leak=MiB // 8)
    html = render_html(_report(steps, steps_total=10_000))
    # THEN each kept step has its bar, one gap marker says how many are missing, both ends are labelled
    assert _step_groups(html) == 256
    assert html.count('<g class="gap">') == 1 and "9,744 steps not kept" in html
    assert "256 of 10,000 steps" in html
    assert ">9760</text>" in html and ">9999</text>" in html
    # AND the end-of-step line breaks at the gap instead of crossing it
    assert html.count('<polyline class="end"') == 2


def test_capacity_line_only_when_the_device_has_a_capacity():
    with_capacity = render_html(_report(capacity=1024 * MiB))
    assert '<g class="capacity">' in with_capacity and "capacity 1 GiB (simulated)" in with_capacity
    assert '<g class="capacity">' not in render_html(_report(capacity=None))


def test_a_run_without_steps_still_renders():
    # GIVEN a run that died before its first optimizer step
    html = render_html(_report([], capacity=256 * MiB, peak_bytes=300 * MiB))
    # THEN the page says so instead of drawing an empty chart, and keeps the rest
    assert "No step was recorded" in html and "<svg" not in html
    assert "300.00 MiB" in html and "outside any step" in html and "OutOfMemoryError" in html


def test_ranks_highlight_the_largest_peak():
    ranks = [_report(rank=r, peak_bytes=p) for r, p in ((0, 300 * MiB), (1, 900 * MiB), (2, 100 * MiB))]
    html = render_html(_report(ranks=ranks))
    largest = re.findall(r'<tr class="largest">(.*?)</tr>', html)
    assert len(largest) == 1 and "900.00 MiB" in largest[0] and ">1</td>" in largest[0]


def test_ranks_table_ends_with_the_jobs_total():
    # GIVEN three ranks (under FSDP each holds a shard: only the sum shows the whole job)
    ranks = [_report(rank=r, peak_bytes=p) for r, p in ((0, 300 * MiB), (1, 900 * MiB), (2, 100 * MiB))]
    html = render_html(_report(ranks=ranks))
    # THEN the last row of the table is the job's total, with its parts by category
    total = re.findall(r'<tr class="total">(.*?)</tr>', html)
    assert len(total) == 1 and ">job</td>" in total[0] and "1.27 GiB" in total[0]
    parameters = sum(r.peak_by_category["parameters"] for r in ranks)
    assert f"parameters {format_bytes(parameters)}" in total[0]


def test_each_category_keeps_one_color_in_legend_bars_and_breakdown():
    assert sorted(STACK) == sorted(CATEGORIES)
    html = render_html(_report())
    for category in CATEGORIES:
        color = COLORS[category]
        assert f'<i class="sw" style="background:{color}"></i>{category.replace("_", " ")}' in html
        assert f'fill="{color}"' in html  # the stacked bars
        assert f"background:{color}\" title=" in html  # the breakdown bar at the peak


def test_saved_json_renders_the_same_page():
    # `oomdoctor report FILE --html` re-renders a saved report: nothing may be lost on the way
    report = _report(ranks=[_report(rank=0)])
    assert render_html(Report.from_dict(report.to_dict())) == render_html(report)


def test_report_of_a_real_training_run_renders():
    # GIVEN the report of a real (CPU) training loop under oomdoctor.track
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 1))
    opt = torch.optim.Adam(model.parameters())
    with oomdoctor.track(quiet=True) as session:
        for _ in range(6):
            loss = model(torch.randn(32, 64)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    report = session.report()
    # THEN every recorded step has its bar and its tooltip, and the peak is in the header
    html = render_html(report)
    assert _step_groups(html) == len(report.steps) == 6
    assert html.count("<title>step ") == 6
    assert format_bytes(report.peak_bytes) in html


def test_write_html_to_a_missing_folder_is_one_line_of_bad_input(tmp_path):
    with pytest.raises(BadInput) as caught:
        write_html(_report(), tmp_path / "nope" / "r.html")
    assert "does not exist" in str(caught.value) and "\n" not in str(caught.value)
    write_html(_report(), tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!doctype html>")


def _chromium(*args: str, profile) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=60)


@needs_chromium
def test_browser_draws_the_report_without_console_messages(tmp_path):
    # GIVEN the report of a long run saved to a file
    steps = _steps(list(range(16)) + list(range(200, 240)))
    page = tmp_path / "report.html"
    write_html(_report(steps, steps_total=240), page)
    # WHEN headless Chromium loads it
    result = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    # THEN the inline script ran to the end, the SVG is in the DOM with a bar per step, and the
    # console stayed silent (a JS error or a blocked network load would be logged as CONSOLE)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'data-ready="1"' in dom
    assert '<svg class="timeline"' in dom and _step_groups(dom) == 56 and '<g class="gap">' in dom
    assert [line for line in result.stderr.splitlines() if ":CONSOLE" in line] == []


@needs_chromium
def test_screenshot_script_makes_a_png(tmp_path):
    # docs/make_screenshot.py is how docs/html-report.png is made (from a real run of a recipe);
    # it must keep working
    out = tmp_path / "shot.png"
    result = subprocess.run([sys.executable, str(REPO / "docs" / "make_screenshot.py"), str(out)],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 1250)


PAYLOAD = '"><script>document.title="pwned"</script><svg onload=alert(1)>'


class _Disguised(int):
    """A number that prints as markup: however a value got into a report, it must come out escaped."""

    def __str__(self) -> str:
        return PAYLOAD

    __format__ = lambda self, spec: PAYLOAD  # noqa: E731


def _crafted() -> Report:
    report = _report()
    for step in report.steps:
        step.index = _Disguised(step.index)
    report.peak_step = report.steps[-1].index
    report.steps_total = _Disguised(5)
    report.exit = ExitInfo(_Disguised(1), PAYLOAD)
    report.device.type, report.device.name = PAYLOAD, PAYLOAD
    f = report.findings[0]
    f.kind, f.severity, f.location.line = PAYLOAD, PAYLOAD, _Disguised(3)
    report.batch["recommended_batch_size"] = PAYLOAD
    report.batch["trials"][0]["source"] = PAYLOAD
    report.ranks = [_report(rank=_Disguised(0))]
    return report


def test_every_value_is_escaped_numbers_too():
    # GIVEN a report whose numbers and strings all print as markup
    html = render_html(_crafted())
    # THEN only our own script exists and no tag or attribute of the payload survives
    assert html.count("<script") == 1 and "<svg onload" not in html and '"><script' not in html
    assert html.count("&quot;&gt;&lt;script&gt;") >= 10


def test_the_page_runs_only_its_own_script():
    html = render_html(_report())
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    script_src = re.search(r"script-src ([^;]+)", csp).group(1)
    assert "unsafe-inline" not in script_src and script_src.startswith("'sha256-")


@needs_chromium
def test_browser_runs_no_injected_script(tmp_path):
    # GIVEN the page of a crafted report, and the same page with a script injected as if escaping
    # had failed somewhere
    crafted = tmp_path / "crafted.html"
    crafted.write_text(render_html(_crafted()), encoding="utf-8")
    injected = tmp_path / "injected.html"
    injected.write_text(render_html(_report()).replace(
        "<main>", '<main><script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'),
        encoding="utf-8")
    for page in (crafted, injected):
        # WHEN headless Chromium loads it
        result = _chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
        # THEN our own script ran (allowed by its hash) and nothing else did
        assert result.returncode == 0, result.stderr[-2000:]
        assert 'data-ready="1"' in result.stdout
        title = re.search(r"<title>(.*?)</title>", result.stdout, re.S).group(1)
        assert "pwned" not in title.replace("&quot;pwned&quot;", "")
        assert not title.startswith("pwned")


def test_estimated_peaks_are_pale_and_explained_in_the_legend():
    steps = _steps(range(6))
    for step in steps[1::2]:
        step.exact = False
    html = render_html(_report(steps))
    assert html.count('class="step estimated"') + html.count('class="step peak estimated"') == 3
    assert "pale: estimated peak" in html and html.count("peak ≈ ") == 3
    assert "estimated peak" not in render_html(_report())


def test_an_estimated_headline_peak_and_its_breakdown_are_marked_as_estimates():
    # GIVEN a run whose highest step was not watched op by op (its peak is an estimate)
    steps = _steps(range(5))
    steps[-1].exact = False
    # THEN the headline peak and the breakdown at the peak carry `~`, in HTML and in the terminal
    html = render_html(_report(steps))
    assert re.search(r'<h2>Peak</h2><div class="big">~[\d.]+ MiB</div>', html)
    assert re.search(r"At the peak <span class=\"dim\">~[\d.]+ MiB by category, estimated", html)
    console = io.StringIO()
    print_report(_report(steps), file=console)
    assert "At the peak (~ estimated)" in console.getvalue()
    # AND a measured peak carries none
    steps[-1].exact = True
    assert '<div class="big">~' not in render_html(_report(steps))
    console = io.StringIO()
    print_report(_report(steps), file=console)
    assert "estimated" not in console.getvalue()
