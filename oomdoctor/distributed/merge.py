"""One report for a whole multi-process job, made from its ranks' reports.

The merged report is the heaviest rank's timeline (the rank that runs out first), every rank's
findings named by rank, an `imbalance` finding when one rank peaks well above another, and the
job's total beside the per-rank view: `aggregates["job"]` sums the ranks' peaks and their
breakdowns. Under FSDP or ZeRO each rank holds a shard of the parameters, gradients and optimizer
state, so a rank's report shows its shard and the job's total shows the whole model.
"""
from __future__ import annotations

from dataclasses import replace

from ..report.model import Finding, Report, empty_categories
from ..sizes import format_bytes

IMBALANCE = 1.25  # a rank whose peak is this much above the lowest is worth a look


def merge(reports: list[Report], missing: dict[int, str] | None = None) -> Report:
    """The job's report from its ranks' (sorted by rank); `missing` says why a rank has none."""
    heaviest = max(reports, key=lambda r: r.peak_bytes)
    findings: list[Finding] = []
    for report in reports:
        for finding in report.findings:
            findings.append(replace(finding, title=f"rank {report.rank}: {finding.title}",
                                    evidence={**finding.evidence, "rank": report.rank}))
    imbalance = _imbalance(reports)
    if imbalance is not None:
        findings.append(imbalance)
    notes = list(heaviest.notes) + [f"oomdoctor: warning: no report from rank {r}: {why}"
                                    for r, why in sorted((missing or {}).items())]
    aggregates = {**heaviest.aggregates, "job": job_total(reports, missing)}
    return replace(heaviest, findings=findings, ranks=list(reports), rank=None, notes=notes, aggregates=aggregates,
                   exit=reports[0].exit if reports[0].rank == 0 else heaviest.exit)


def job_total(reports: list[Report], missing: dict[int, str] | None = None) -> dict:
    """The whole job's memory: the sum of the ranks' peaks (each on its own device), by category.

    An upper bound of what the job holds at one moment: ranks peak at about the same step in
    data-parallel training, so it is close.
    """
    by_category = empty_categories()
    for report in reports:
        for category, nbytes in report.peak_by_category.items():
            by_category[category] = by_category.get(category, 0) + nbytes
    return {"ranks": len(reports) + len(missing or {}), "reported": len(reports),
            "peak_bytes": sum(r.peak_bytes for r in reports), "peak_by_category": by_category}


def _imbalance(reports: list[Report]) -> Finding | None:
    heaviest = max(reports, key=lambda r: r.peak_bytes)
    lightest = min(reports, key=lambda r: r.peak_bytes)
    if len(reports) < 2 or heaviest.peak_bytes <= IMBALANCE * max(lightest.peak_bytes, 1):
        return None
    extra = heaviest.peak_bytes - lightest.peak_bytes
    return Finding(
        kind="imbalance", severity="warning",
        title=f"rank {heaviest.rank} peaks {format_bytes(extra)} above rank {lightest.rank}",
        detail=("Peak memory per rank: " + ", ".join(f"rank {r.rank} {format_bytes(r.peak_bytes)}" for r in reports)
                + f". Rank {heaviest.rank} runs out first: look at it first (uneven data shards, work "
                  "done only on one rank such as logging or evaluation, or a rank keeping extra tensors)."),
        bytes=extra,
        remedy=f"Compare rank {heaviest.rank}'s report with rank {lightest.rank}'s: ranks[] in the JSON.",
        evidence={"peaks": {str(r.rank): r.peak_bytes for r in reports}},
    )
