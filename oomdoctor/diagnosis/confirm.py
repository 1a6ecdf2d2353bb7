"""Runtime findings that `oomdoctor lint` also finds statically: the report says so.

A finding seen both ways is certain and cheap to keep out: `oomdoctor lint` in CI or a pre-commit
hook catches it next time without running anything.
"""
from __future__ import annotations

import os
from dataclasses import replace

from ..lint import lint_file
from ..report.model import Finding

STATIC_KINDS = ("retained-graph", "missing-no-grad", "memory-growth")


def confirm_with_lint(findings: list[Finding]) -> list[Finding]:
    """The findings, those at a line where lint reports the same kind marked as confirmed."""
    cache: dict[str, set[tuple[str, int]]] = {}
    confirmed = []
    for finding in findings:
        location = finding.location
        if finding.kind in STATIC_KINDS and location and os.path.isfile(location.file):
            if location.file not in cache:
                try:
                    cache[location.file] = {(f.kind, f.line) for f in lint_file(location.file)}
                except Exception:  # a file lint cannot read or parse: nothing to confirm
                    cache[location.file] = set()
            if (finding.kind, location.line) in cache[location.file]:
                finding = replace(finding, evidence={**finding.evidence, "confirmed_by_lint": True},
                                  detail=finding.detail + " `oomdoctor lint` finds this line too, without running it.")
        confirmed.append(finding)
    return confirmed
