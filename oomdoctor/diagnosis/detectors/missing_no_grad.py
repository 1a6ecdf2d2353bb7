"""`missing-no-grad`: a forward pass built an autograd graph that no backward pass ever used.

Typically evaluation or inference without `torch.no_grad()`, often with the model in `eval()`:
every activation needed for a backward that never comes is saved, which can multiply the
memory of the pass. Reads the `unused-graph` events of probes/graphs.py (one per call: the
forward's line and the user's lines that led to it, with counts) and reports a call only when
none of its forwards was back-propagated, so a training step that skips one backward is not
flagged. When the same line is back-propagated from other calls (one `infer()` used by training
and evaluation), the call is reported only at least twice and with the model in eval() mode or a
module that no backward ever reached through any call (a DQN's target network run through the
online network's helper): a GAN step that detaches the output of a generator it trains builds a
graph for nothing too, in train() mode. When the run ended with an exception the last forward may
have been cut short before its backward: such a site needs two unused graphs. Calls reported at one
line (the root modules a helper runs one after the other: a model, then its heads) are one finding.
Events with `inner` are inner modules' graphs unused inside a back-propagated forward (a teacher
run through a method of its own), counted on the steps watched op by op.
"""
from __future__ import annotations

from ...report.model import Finding, Location, Remedy
from ...sizes import format_bytes
from ...core.timeline import Timeline


def detect(timeline: Timeline) -> list[Finding]:
    need = 2 if timeline.exception is not None else 1
    found = [e for e in timeline.events
             if e["kind"] == "unused-graph" and e.get("backwards", 0) == 0 and e.get("unused", 0) >= need
             and (not e.get("line_backwards")
                  or e.get("unused", 0) >= 2 and (e.get("eval") or e.get("module_backwards") == 0))]
    by_line: dict[tuple, list[dict]] = {}
    for e in found:
        by_line.setdefault((e["location"].get("file"), e["location"].get("line")), []).append(e)
    # The call that saved most, and of equals the first that ran (the model before its heads).
    return [_finding(max(group, key=lambda e: (e.get("saved_bytes", 0), e["unused"], -e.get("call", 0))))
            for group in by_line.values()]


def _finding(e: dict) -> Finding:
    loc = e["location"]
    saved, unused = e.get("saved_bytes", 0), e["unused"]
    mode = " with the model in eval() mode" if e.get("eval") else ""
    passes = "pass" if unused == 1 else "passes"
    watched = " (counted on the steps watched op by op)" if e.get("inner") else ""
    detail = (f"{unused} forward {passes} of `{e['module']}` here{watched} ran with gradients enabled{mode} and "
              f"no backward() used their graph. Each kept the activations a backward would need: "
              f"about {format_bytes(saved)} held for nothing at the peak of each pass.")
    if e.get("eval"):
        detail += " `model.eval()` changes dropout and batch norm; it does not turn autograd off."
    code = loc.get("code") or "output = model(inputs)"
    return Finding(
        kind="missing-no-grad",
        severity="warning",
        title=f"Forward of `{e['module']}` builds a graph that no backward uses ({unused} {passes})",
        detail=detail,
        location=Location(**loc),
        bytes=saved,
        remedy="Run this forward under `torch.no_grad()` (or `torch.inference_mode()`).",
        remedies=[
            Remedy("Wrap the evaluation in `torch.no_grad()`", saves_bytes=saved, before=code,
                   after=f"with torch.no_grad():\n    {code}"),
            Remedy("Or use `torch.inference_mode()`: no graph and no version counters", saves_bytes=saved,
                   before=code, after=f"with torch.inference_mode():\n    {code}",
                   detail="Tensors created under it cannot be used in autograd later."),
        ],
        evidence={k: e.get(k) for k in ("module", "eval", "forwards", "backwards", "unused", "saved_bytes")},
    )
