"""Detectors: pure functions from a recorded `Timeline` to `Finding`s.

Each detector takes the timeline and returns a list of findings; it never touches torch state,
so it is tested on hand-built timelines. A detector that fails becomes a note in the report,
never a crash of the user's run.
"""
from __future__ import annotations

from typing import Callable

from ...report.model import Finding
from ...core.timeline import Timeline
from . import capacity, growth, missing_no_grad, oom, retained_graph

Detector = Callable[[Timeline], list[Finding]]

DETECTORS: list[Detector] = [capacity.detect, oom.detect, retained_graph.detect, missing_no_grad.detect,
                               growth.detect]


def run_detectors(timeline: Timeline) -> tuple[list[Finding], list[str]]:
    findings: list[Finding] = []
    notes: list[str] = []
    for detect in DETECTORS:
        try:
            findings.extend(detect(timeline))
        except Exception as exc:
            notes.append(f"oomdoctor: warning: detector {detect.__module__} failed: {exc!r}")
    return findings, notes
