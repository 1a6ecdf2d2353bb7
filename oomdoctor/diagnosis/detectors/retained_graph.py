"""`retained-graph`: a tensor carrying its autograd graph is kept across steps, so every step's
graph stays alive (`total_loss += loss`, `losses.append(loss)`, a feature bank on a module).

Reads the `retained-graph` events of probes/graphs.py, one per holder. The finding names the
holder as the user writes it, points at the statement that attaches the graph to it, says how
many steps' graphs are alive and what they keep (saved activations when no backward ran through
them; after backward the activations are freed and a chain of autograd nodes is what grows),
and gives the fix as before/after code.
"""
from __future__ import annotations

from ...report.model import Finding, Location, Remedy
from ...sizes import format_bytes
from ...core.timeline import Timeline


def detect(timeline: Timeline) -> list[Finding]:
    # A detection on the forward clock is provisional while the run goes on: a backward may
    # still reach the graphs (gradient accumulation, an RL episode).
    return [_finding(e) for e in timeline.events if e["kind"] == "retained-graph" and not e.get("provisional")]


def _finding(e: dict) -> Finding:
    holder = f"`{e['holder']}`" if e.get("holder") else "A tensor outside your frames"
    steps, kept = e.get("steps_alive", 0), e.get("bytes", 0)
    unit = "steps" if e.get("clock", "step") == "step" else "forward passes"
    per = "step" if unit == "steps" else "forward pass"
    if e.get("backward"):
        what = (f"After backward() their saved activations are freed, but the chain of autograd nodes "
                f"({e.get('nodes', 0)} at the last count, about {format_bytes(e.get('bytes_per_step', 0))} "
                f"per {per}) grows with every {per} and makes each backward() slower")
    else:
        what = (f"No backward() ran through them, so each keeps every activation saved for backward "
                f"(about {format_bytes(e.get('bytes_per_step', 0))} per {per})")
    method = e.get("method") or ".detach()"
    number = "a Python number" if method == ".item()" else "a tensor without its graph"
    detail = (f"{holder} holds a tensor that carries its autograd graph, so the graphs of {steps} {unit} "
              f"stay alive: {format_bytes(kept)} kept. {what}. Store {number} instead.")
    remedies = []
    if e.get("before"):
        remedies.append(Remedy(f"Attach {number} with `{method}`", saves_bytes=kept,
                               before=e["before"], after=e["after"],
                               detail="`float(loss)` works as well as `loss.item()` for a scalar."
                               if method == ".item()" else ""))
    site = e.get("forward_site")
    if not e.get("backward") and site and site.get("code"):
        remedies.append(Remedy("Evaluate without building a graph", saves_bytes=kept, before=site["code"],
                               after=f"with torch.no_grad():\n    {site['code']}",
                               detail="`torch.inference_mode()` saves a little more where the outputs "
                                      "never need autograd."))
    loc = e.get("location")
    return Finding(
        kind="retained-graph",
        severity="error",
        title=f"{holder} keeps the autograd graph of every {per} ({steps} {unit} alive)",
        detail=detail,
        location=Location(**loc) if loc else None,
        bytes=kept,
        remedy=f"Attach `{method}` to what is stored in {holder}" if e.get("holder") else
        "Store `.item()` or `.detach()` of tensors kept across steps",
        remedies=remedies,
        evidence={k: e.get(k) for k in ("holder", "clock", "steps_alive", "bytes_per_step", "nodes",
                                        "backward", "detected_at", "forward_site")},
    )
