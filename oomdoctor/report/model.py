"""The report as plain data.

A `Report` is what a session produces and what every renderer (console, JSON, HTML) reads. It
round-trips through JSON (`to_dict` / `from_dict`) so a saved report renders again unchanged;
`from_dict` checks every field against these dataclasses first (`schema.py`).
The JSON form is the contract `oomdoctor.report/1` of design.md: add fields, never rename them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .schema import report_from_data

SCHEMA = "oomdoctor.report/1"
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "other")
SEVERITIES = ("error", "warning", "info")
# The stable vocabulary of finding kinds (design.md, "Contracts"): only ever extended.
FINDING_KINDS = frozenset({
    "retained-graph", "missing-no-grad", "memory-growth", "oom", "fragmentation", "near-capacity", "imbalance",
})


def empty_categories() -> dict[str, int]:
    return {name: 0 for name in CATEGORIES}


@dataclass
class Location:
    file: str
    line: int
    function: str
    code: str | None = None  # the source line, stripped, for the report

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


@dataclass
class Remedy:
    """One fix, with the memory it saves where that can be computed."""

    title: str
    saves_bytes: int | None = None
    detail: str = ""
    before: str | None = None  # code as the user wrote it
    after: str | None = None  # the same code fixed


@dataclass
class Finding:
    kind: str  # stable vocabulary: retained-graph, missing-no-grad, memory-growth, oom, fragmentation, ...
    severity: str  # error | warning | info
    title: str
    detail: str
    location: Location | None = None
    bytes: int | None = None  # memory at stake
    remedy: str = ""
    remedies: list[Remedy] = field(default_factory=list)  # ranked, largest saving first
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    index: int
    start_bytes: int
    peak_bytes: int
    end_bytes: int
    duration_s: float
    by_category: dict[str, int] = field(default_factory=empty_categories)  # at the step's peak
    exact: bool = True  # False when the peak is an estimate (cheap accounting on CPU)


@dataclass
class Device:
    type: str  # "cuda" | "cpu" | ...
    name: str
    capacity_bytes: int | None
    simulated: bool = False  # capacity comes from --capacity, not from the hardware
    index: int | None = None


@dataclass
class ExitInfo:
    code: int = 0
    exception: str | None = None  # "OutOfMemoryError: CUDA out of memory. ..." when the run raised


@dataclass
class Report:
    device: Device
    steps: list[Step] = field(default_factory=list)  # a bounded window: the first and the latest steps
    steps_total: int = 0
    peak_bytes: int = 0
    peak_step: int | None = None
    peak_by_category: dict[str, int] = field(default_factory=empty_categories)
    findings: list[Finding] = field(default_factory=list)
    exit: ExitInfo = field(default_factory=ExitInfo)
    accounting: str = "ledger"  # cuda-allocator | ledger | hooks: how the bytes were measured
    command: list[str] | None = None
    duration_s: float = 0.0
    aggregates: dict[str, Any] = field(default_factory=dict)  # over all steps, also those out of the window
    batch: dict[str, Any] | None = None  # a batch-size recommendation, when one was made
    ranks: list["Report"] | None = None  # merged multi-process report only
    rank: int | None = None
    notes: list[str] = field(default_factory=list)  # oomdoctor's own warnings about this run
    schema: str = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.ranks is None:
            data.pop("ranks")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        """A report from its JSON form, every field checked (`schema.SchemaError`, a ValueError,
        names the first one that is wrong)."""
        return report_from_data(cls, SCHEMA, data)

    @property
    def peak_estimated(self) -> bool:
        """The peak comes from a step measured without the per-op view (its step found by value
        when none is named), or from outside any step (an estimate, the report says so)."""
        at_peak = (lambda s: s.index == self.peak_step) if self.peak_step is not None else (
            lambda s: s.peak_bytes == self.peak_bytes)
        return bool(self.aggregates.get("peak_estimated")) or any(at_peak(s) and not s.exact for s in self.steps)

    def findings_by_stake(self) -> list[Finding]:
        """Findings ordered as the report shows them: errors first, then by bytes at stake."""
        order = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(self.findings, key=lambda f: (order.get(f.severity, 9), -(f.bytes or 0)))


def no_findings(report: "Report") -> str:
    """What a report without findings says: nothing found, or nothing watched."""
    if report.steps_total == 0:
        return "No step was watched in this process, so nothing can be said about one (see the notes)."
    return "No memory problem found."
