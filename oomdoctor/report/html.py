"""HTML renderer: the whole report as ONE self-contained file that reads at a glance.

`render_html(report) -> str`; `write_html(report, path)` saves it (a one-line `BadInput` when the
folder does not exist). The file loads nothing from anywhere: inline CSS, an inline SVG chart
(`svg.py`), one line of inline script, system fonts, and a Content-Security-Policy that forbids
any network load and runs no script but ours (allowed by its hash, so an injected one would not
run even if escaping failed). Every value of the report, strings and numbers alike, is escaped,
cut to a readable length and cleaned of control characters (`text.clean`): a saved JSON file may
come from anywhere. Order, as in the terminal report: what ran and where, the peak and how the
run ended, memory per step, the breakdown at the peak, the findings ranked by the memory at
stake, the batch size recommendation (only when the report carries one), the ranks of a
multi-process run; oomdoctor's own notes sit small under the header.
"""
from __future__ import annotations

import base64
import hashlib
import re
import shlex
from html import escape
from pathlib import Path
from typing import Any

from ..distributed.merge import job_total
from ..errors import BadInput
from ..sizes import format_bytes
from .json import check_writable
from .model import Finding, Remedy, Report, no_findings
from .svg import COLORS, STACK, chart_steps, legend, timeline_svg
from .text import CODE, ITEMS, TEXT, TITLE, clean, more

_ACCOUNTING = {
    "cuda-allocator": "CUDA caching allocator statistics (exact)",
    "ledger": "tensor ledger, every op (exact)",
    "ledger-sampled": "tensor ledger, every op on sampled steps; the C heap at forward, backward and optimizer ends on the others (their peaks are estimates)",
    "hooks": "hooks on parameters, gradients, optimizer state and saved activations",
}
# Marks the page as fully drawn, for headless checks that no script failed before it.
_SCRIPT = 'document.body.dataset.ready = "1";'
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
# Inline style attributes (bar widths) need 'unsafe-inline' for styles; scripts never do.
_CSP = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{_SCRIPT_HASH}'; img-src data:"
REMEDIES = 10  # per finding


def render_html(report: Report) -> str:
    title = "oomdoctor · " + (_command(report.command) if report.command else "memory report")
    body = [_header(report), _notes(report), _timeline(report), _breakdown(report), _findings(report),
            _batch(report.batch, report.device.capacity_bytes), _ranks(report.ranks)]
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title, TITLE)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(part for part in body if part)
        + f'\n<footer>{_e(report.schema, TITLE)} · made by oomdoctor</footer>\n</main>\n'
        f"<script>{_SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_html(report: Report, path: str | Path) -> None:
    path = Path(path)
    check_writable(path)
    try:
        path.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror}") from None


def _e(value: Any, limit: int = TEXT) -> str:
    """Any value of the report as HTML text: cleaned, cut to `limit`, escaped (quotes too)."""
    return escape(clean(value, limit))


def _text(value: Any, limit: int = TEXT) -> str:
    """Escape, then show `backticked` words as code: details and remedies quote code that way."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(value, limit))


def _command(command: list[str]) -> str:
    return shlex.join(clean(arg, TEXT) for arg in command)


def _header(report: Report) -> str:
    d = report.device
    command = _command(report.command) if report.command else "(no command recorded)"
    capacity = _e(format_bytes(d.capacity_bytes)) if d.capacity_bytes else "unlimited"
    badge = ' <span class="badge simulated">simulated</span>' if d.simulated else ""
    where = _e(str(d.type) + (f":{d.index}" if d.index is not None else ""), TITLE)
    peak_at = _e(f"at step {report.peak_step}") if report.peak_step is not None else "outside any step"
    approx = "~" if report.peak_estimated else ""
    share = ""
    if approx:
        share = '<div class="sub">~ estimated: not watched op by op (--exact watches every op)</div>'
    if d.capacity_bytes:
        ratio = report.peak_bytes / d.capacity_bytes
        level = "bad" if ratio >= 1 else ("warn" if ratio >= 0.9 else "ok")
        share += (f'<div class="meter {level}"><span style="width:{min(ratio, 1) * 100:.1f}%"></span></div>'
                  f'<div class="sub">{_e(f"{ratio:.0%}")} of capacity</div>')
    exception = report.exit.exception
    ok = report.exit.code == 0 and not exception
    raised = _e(exception.split(":")[0], TITLE) if exception else "no exception"
    banner = f'<pre class="exception">{_e(exception)}</pre>' if exception else ""
    accounting = _ACCOUNTING.get(report.accounting, report.accounting)
    steps = _e(f"{report.steps_total:,} step{'' if report.steps_total == 1 else 's'}")
    return f"""<header>
<h1>oomdoctor memory report</h1>
<div class="command"><code>{_e(command)}</code></div>
<div class="facts">
<div class="fact"><h2>Peak</h2><div class="big">{approx}{_e(format_bytes(report.peak_bytes))}</div>
<div class="sub">{peak_at}</div>{share}</div>
<div class="fact"><h2>Device</h2><div class="big">{where}</div><div class="sub">{_e(d.name, TITLE)}</div>
<div class="sub">capacity {capacity}{badge}</div></div>
<div class="fact"><h2>Run</h2><div class="big">{steps}</div>
<div class="sub">{_e(f"{report.duration_s:.1f}")} s</div><div class="sub">measured by {_e(accounting, TITLE)}</div></div>
<div class="fact"><h2>Outcome</h2><div class="big {"ok" if ok else "bad"}">exit {_e(report.exit.code)}</div>
<div class="sub">{raised}</div></div>
</div>
{banner}
</header>"""


def _notes(report: Report) -> str:
    if not report.notes:
        return ""
    items = "".join(f"<li>{_e(note)}</li>" for note in report.notes[:ITEMS])
    if len(report.notes) > ITEMS:
        items += f"<li>{_e(more(ITEMS, len(report.notes), 'notes'))}</li>"
    return f'<ul class="notes">{items}</ul>'


def _timeline(report: Report) -> str:
    if not report.steps:
        return ('<section id="timeline"><h2>Memory per step</h2><p class="empty">No step was recorded: '
                "oomdoctor marks a step at each <code>optimizer.step()</code>, decorated call or "
                "<code>session.step()</code>.</p></section>")
    kept = len(chart_steps(report.steps))
    total = max(report.steps_total, len(report.steps))
    shown = f"all {kept} steps" if total <= kept else f"{kept} of {total:,} steps"
    return (f'<section id="timeline"><h2>Memory per step <span class="dim">{_e(shown)}; bars: peak by '
            f"category, notch: start of the step, line: end of the step; hover a bar for numbers</span></h2>"
            f"{legend(report)}{timeline_svg(report)}</section>")


def _breakdown(report: Report) -> str:
    values = {c: report.peak_by_category.get(c, 0) for c in STACK}
    total = sum(values.values())
    if not total:
        return ""
    bar = "".join(f'<span style="width:{v / total * 100:.2f}%;background:{COLORS[c]}" '
                  f'title="{_e(c.replace("_", " "))}: {_e(format_bytes(v))}"></span>'
                  for c, v in values.items() if v)
    cells = "".join(
        f'<div><div class="sub"><i class="sw" style="background:{COLORS[c]}"></i>{c.replace("_", " ")}</div>'
        f'<b>{_e(format_bytes(v))}</b> <span class="dim">{v / total:.0%}</span></div>'
        for c, v in values.items())
    approx = "~" if report.peak_estimated else ""
    return (f'<section id="breakdown"><h2>At the peak <span class="dim">{approx}{_e(format_bytes(total))} by '
            f'category{", estimated" if approx else ""}</span></h2><div class="stack">{bar}</div><div class="breakdown">{cells}</div></section>')


def _findings(report: Report) -> str:
    findings = report.findings_by_stake()
    if not findings:
        return f'<section id="findings"><h2>Findings</h2><p class="good">{_e(no_findings(report))}</p></section>'
    cards = "\n".join(_finding(i, f) for i, f in enumerate(findings[:ITEMS], 1))
    if len(findings) > ITEMS:
        cards += f'\n<p class="empty">{_e(more(ITEMS, len(findings), "findings"))}</p>'
    return (f'<section id="findings"><h2>Findings <span class="dim">ranked by memory at stake</span></h2>'
            f"{cards}</section>")


def _finding(number: int, f: Finding) -> str:
    severity = f.severity if f.severity in ("error", "warning", "info") else "info"
    stake = f'<span class="stake">{_e(format_bytes(f.bytes))} at stake</span>' if f.bytes else ""
    parts = [f'<article class="finding {severity}"><div class="head"><span class="n">{number}</span>'
             f'<span class="badge {severity}">{_e(f.severity, 40)}</span><span class="kind">{_e(f.kind, 40)}</span>'
             f"<h3>{_text(f.title, TITLE)}</h3>{stake}</div>"]
    if f.location:
        loc = f.location
        parts.append(f'<div class="where"><code>{_e(f"{clean(loc.file, TITLE)}:{loc.line}")}</code> in '
                     f"<code>{_e(loc.function, TITLE)}</code></div>")
        if loc.code:
            parts.append(f'<pre class="code"><span class="lineno">{_e(loc.line)}</span>{_e(loc.code, CODE)}</pre>')
    parts.append(f"<p>{_text(f.detail)}</p>")
    if f.remedy:
        parts.append(f'<p class="fix"><b>Fix</b> {_text(f.remedy)}</p>')
    if f.remedies:
        items = "".join(_remedy(r) for r in f.remedies[:REMEDIES])
        if len(f.remedies) > REMEDIES:
            items += f'<li class="dim">{_e(more(REMEDIES, len(f.remedies), "remedies"))}</li>'
        parts.append(f'<ol class="remedies">{items}</ol>')
    parts.append("</article>")
    return "".join(parts)


def _remedy(r: Remedy) -> str:
    saves = f' <span class="saves">saves {_e(format_bytes(r.saves_bytes))}</span>' if r.saves_bytes else ""
    out = f"<li><div>{_text(r.title, TITLE)}{saves}</div>"
    if r.detail:
        out += f'<div class="dim">{_text(r.detail)}</div>'
    if r.before or r.after:
        out += '<div class="diff">' + "".join(
            f'<figure class="{side}"><figcaption>{side}</figcaption><pre>{_e(code, CODE)}</pre></figure>'
            for side, code in (("before", r.before), ("after", r.after)) if code) + "</div>"
    return out + "</li>"


def _batch(batch: dict[str, Any] | None, capacity: int | None) -> str:
    if not batch:
        return ""
    trials = sorted(batch.get("trials") or [], key=lambda t: t.get("batch_size") or 0)
    # Peaks read against the capacity when there is one: a full bar is a batch that does not fit.
    top = capacity or max([t.get("peak_bytes") or 0 for t in trials] + [1])
    rows = "".join(_trial(t, top) for t in trials[:ITEMS])
    scale = "of capacity" if capacity else ""
    table = (f'<table class="trials"><tr><th>batch size</th><th>result</th><th>peak</th><th>{scale}</th>'
             f"<th>time</th><th>source</th></tr>{rows}</table>") if trials else ""
    recommended, largest = (_e(batch.get(k), 40) for k in ("recommended_batch_size", "max_batch_size"))
    return (f'<section id="batch"><h2>Batch size</h2><div class="facts">'
            f'<div class="fact"><h2>Recommended</h2><div class="big ok">{recommended}</div>'
            f'<div class="sub">leaves headroom for variation</div></div>'
            f'<div class="fact"><h2>Largest that fits</h2><div class="big">{largest}</div>'
            f'<div class="sub">{len(trials)} trials</div></div></div>{table}</section>')


def _trial(t: dict[str, Any], top: int) -> str:
    fits, peak = bool(t.get("fits")), t.get("peak_bytes")
    share = min((peak or 0) / top, 1) * 100
    return (f'<tr class="{"fits" if fits else "fails"}"><td class="num">{_e(t.get("batch_size"), 40)}</td>'
            f'<td>{"fits" if fits else "out of memory"}</td><td class="num">{_e(format_bytes(peak))}</td>'
            f'<td><div class="meter"><span style="width:{share:.1f}%"></span></div></td>'
            f'<td class="num">{_seconds(t.get("seconds"))}</td><td>{_e(t.get("source") or "", 40)}</td></tr>')


def _seconds(value: Any) -> str:
    return _e(f"{value:.2f} s") if isinstance(value, (int, float)) else "-"


def _ranks(ranks: list[Report] | None) -> str:
    if not ranks:
        return ""
    largest = max(range(len(ranks)), key=lambda i: ranks[i].peak_bytes)
    rows = []
    for i, r in enumerate(ranks[:ITEMS]):
        rank = _e(r.rank if r.rank is not None else i, 40)
        mark = ' <span class="badge error">largest</span>' if i == largest else ""
        ended = _e(r.exit.exception.split(":")[0], TITLE) if r.exit.exception else f"exit {_e(r.exit.code)}"
        device = _e(str(r.device.type) + ("" if r.device.index is None else f":{r.device.index}"), TITLE)
        rows.append(f'<tr class="{"largest" if i == largest else ""}"><td class="num">{rank}</td>'
                    f"<td>{device}</td>"
                    f'<td class="num">{_e(format_bytes(r.peak_bytes))}{mark}</td>'
                    f'<td class="num">{"" if r.peak_step is None else _e(r.peak_step)}</td>'
                    f'<td class="num">{_e(f"{r.steps_total:,}")}</td><td class="num">{len(r.findings)}</td>'
                    f"<td>{ended}</td></tr>")
    if len(ranks) > ITEMS:
        rows.append(f'<tr><td colspan="7" class="dim">{_e(more(ITEMS, len(ranks), "ranks"))}</td></tr>')
    # Under FSDP/ZeRO a rank holds shards: only the job's total shows the whole model.
    job = job_total(ranks)
    parts = ", ".join(f"{c.replace('_', ' ')} {format_bytes(n)}" for c, n in job["peak_by_category"].items() if n)
    rows.append(f'<tr class="total"><td>job</td><td></td><td class="num">{_e(format_bytes(job["peak_bytes"]))}</td>'
                f'<td colspan="4" class="dim">the sum of the ranks\' peaks{_e(": " + parts, TITLE) if parts else ""}</td></tr>')
    return ('<section id="ranks"><h2>Ranks <span class="dim">peak per process</span></h2><table class="ranks">'
            "<tr><th>rank</th><th>device</th><th>peak</th><th>peak step</th><th>steps</th><th>findings</th>"
            f"<th>ended</th></tr>{''.join(rows)}</table></section>")


_CSS = """
:root{--fg:#1d232a;--dim:#65707c;--line:#e3e6ea;--bg:#f6f7f9;--card:#fff;--err:#c0392b;--warn:#b7791f;
--info:#2b6cb0;--ok:#2f855a;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 24px 32px}
h1{font-size:20px;margin:0 0 4px}
h2{font-size:15px;margin:0 0 10px}
h3{font-size:15px;margin:0;flex:1}
code,pre{font-family:var(--mono);font-size:12.5px}
.command code{color:var(--dim);word-break:break-all}
.dim{color:var(--dim);font-weight:normal;font-size:13px}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:12px;margin:14px 0}
.fact,section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
section{margin:14px 0}
section .fact{border-color:var(--line);background:var(--bg)}
.fact h2{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--dim);margin:0 0 4px}
.big{font-size:22px;font-weight:600}
.big.ok{color:var(--ok)}.big.bad{color:var(--err)}
.sub{color:var(--dim);font-size:13px}
.badge{display:inline-block;font-size:11px;font-weight:600;padding:1px 7px;border-radius:9px;color:#fff;
background:var(--info);text-transform:uppercase;letter-spacing:.03em;vertical-align:1px}
.badge.simulated{background:#805ad5}.badge.error{background:var(--err)}.badge.warning{background:var(--warn)}
.meter{height:8px;background:var(--line);border-radius:4px;overflow:hidden;margin:6px 0 2px;min-width:80px}
.meter span{display:block;height:100%;background:var(--info)}
.meter.ok span{background:var(--ok)}.meter.warn span{background:var(--warn)}.meter.bad span{background:var(--err)}
pre.exception{white-space:pre-wrap;word-break:break-word;color:var(--err);margin:0 0 14px;padding:10px 14px;
background:#fdf0ef;border:1px solid #f5c6c1;border-radius:8px;max-height:12em;overflow:auto}
.notes{margin:0;padding:8px 14px 8px 30px;background:#fffbea;border:1px solid #f3e3a4;border-radius:8px;
font-size:12.5px;color:#6b5a1e}
.empty,.good{color:var(--dim);margin:0}.good{color:var(--ok);font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12.5px;color:var(--dim);margin-bottom:6px}
.key{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.legend .sw{margin:0}
.line{display:inline-block;width:18px;border-top:2px solid #1d232a}
.sw.notch{background:linear-gradient(#a0a4a8 40%,#fff 40% 62%,#a0a4a8 62%)}.line.cap{border-top:2px dashed var(--err)}
svg.timeline{width:100%;height:auto;display:block;font-family:inherit}
svg text{font-size:11.5px;fill:var(--dim)}
.axis line{stroke:#9aa3ad}.axis .grid{stroke:var(--line)}.axis .title{font-size:12px}
.step.estimated rect:not(.hit){opacity:.5}.sw.est{background:#59a14f;opacity:.5}
.step .hit{fill:transparent}.step:hover .hit{fill:#eef2f7}
.peak-mark{fill:var(--err)}.peak-label{fill:var(--err);font-weight:600}
polyline.end{fill:none;stroke:#1d232a;stroke-width:1.8;stroke-linejoin:round}circle.end{fill:#1d232a}
line.start{stroke:#fff;stroke-width:1.6}
.capacity line{stroke:var(--err);stroke-width:1.6;stroke-dasharray:7 4}.capacity text{fill:var(--err);font-weight:600}
.gap rect{fill:#eef0f3;stroke:#c9ced4;stroke-dasharray:3 3}.gap text{font-size:11px}
.stack{display:flex;height:22px;border-radius:4px;overflow:hidden;margin-bottom:8px}
.breakdown{display:grid;grid-template-columns:repeat(5,1fr);gap:8px}
table{border-collapse:collapse;font-size:13px}
td,th{padding:4px 12px 4px 0;text-align:left;border-bottom:1px solid var(--line)}
th{color:var(--dim);font-weight:600;font-size:12px}
.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fails td{color:var(--err)}tr.fails .meter span{background:var(--err)}tr.fits td:nth-child(2){color:var(--ok)}
tr.largest td{background:#fdecea;font-weight:600}
tr.total td{border-top:2px solid var(--line);font-weight:600}
.trials .meter{width:160px;margin:0}
.finding{border:1px solid var(--line);border-left:4px solid var(--info);border-radius:6px;padding:10px 14px;
margin:10px 0}
.finding.error{border-left-color:var(--err)}.finding.warning{border-left-color:var(--warn)}
.finding .head{display:flex;align-items:center;gap:8px;flex-wrap:wrap}
.finding .n{color:var(--dim);font-weight:600}
.finding .kind{font-family:var(--mono);font-size:12.5px;color:var(--dim)}
.stake{font-weight:600;white-space:nowrap}
.finding p{margin:6px 0}
.where{margin-top:6px;font-size:13px}
pre.code{background:#f3f5f8;border-radius:4px;padding:6px 10px;margin:4px 0;white-space:pre-wrap;word-break:break-word}
.lineno{color:var(--dim);margin-right:14px;user-select:none}
.fix b{color:var(--ok)}
.remedies{margin:6px 0 0;padding-left:22px}.remedies li{margin:6px 0}
.saves{color:var(--ok);font-weight:600;white-space:nowrap}
.diff{display:grid;grid-template-columns:1fr 1fr;gap:8px;margin-top:4px}
.diff figure{margin:0}.diff figcaption{font-size:11px;text-transform:uppercase;color:var(--dim)}
.diff pre{margin:2px 0 0;padding:6px 10px;border-radius:4px;white-space:pre-wrap;word-break:break-word}
.diff .before pre{background:#fdf0ef}.diff .after pre{background:#edf7f0}
footer{color:var(--dim);font-size:12px;text-align:center;margin-top:18px}
"""
