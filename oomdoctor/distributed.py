"""Multi-process runs (torchrun / DDP): one report per rank, merged by rank 0.

`oomdoctor run --nproc-per-node N script.py` launches `torch.distributed.run` with
`-m oomdoctor run ...` per rank; a user's own `torchrun ... -m oomdoctor run ...` works the same.
Each rank writes its report (`r.rank1.json` next to `--json r.json`, else under a folder named by
the launcher's run id); rank 0 waits for the others, then writes and prints the merged report
(`ranks: [...]`), whose findings include every rank's, named by rank, plus memory imbalance.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .report.json import load_json, write_json
from .report.model import Finding, Report
from .sizes import format_bytes

IMBALANCE = 1.25  # a rank whose peak is this much above the lowest is worth a look
WAIT_S = 120.0  # rank 0 waits this long for the other ranks' reports


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    run_id: str


def current_rank() -> Rank | None:
    """This process's place in a torchrun launch, from the environment torchrun sets."""
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
    except (KeyError, ValueError):
        return None
    if world <= 1:
        return None
    return Rank(rank, world, os.environ.get("TORCHELASTIC_RUN_ID", "none"))


def rank_path(json_path: str | None, rank: Rank, which: int | None = None) -> Path:
    """Where rank `which` (default: this rank) writes its own report."""
    which = rank.rank if which is None else which
    if json_path:
        root, ext = os.path.splitext(json_path)
        return Path(f"{root}.rank{which}{ext or '.json'}")
    folder = Path(tempfile.gettempdir()) / f"oomdoctor-{rank.run_id}"
    folder.mkdir(exist_ok=True)
    return folder / f"rank{which}.json"


def collect(json_path: str | None, rank: Rank, timeout: float = WAIT_S) -> tuple[list[Report], list[int]]:
    """Rank 0: the reports of every rank that wrote one in time, and the ranks that did not."""
    deadline = time.monotonic() + timeout
    paths = {r: rank_path(json_path, rank, r) for r in range(rank.world_size)}
    while time.monotonic() < deadline and not all(p.exists() for p in paths.values()):
        time.sleep(0.2)
    reports, missing = [], []
    for r, path in paths.items():
        try:
            reports.append(replace(load_json(path), rank=r))
        except Exception:
            missing.append(r)
    return reports, missing


def merge(reports: list[Report], missing: list[int] | None = None) -> Report:
    """One report for the whole job: the heaviest rank's timeline, every rank's findings, and
    an `imbalance` finding when one rank needs much more memory than another."""
    heaviest = max(reports, key=lambda r: r.peak_bytes)
    findings: list[Finding] = []
    for report in reports:
        for finding in report.findings:
            findings.append(replace(finding, title=f"rank {report.rank}: {finding.title}",
                                    evidence={**finding.evidence, "rank": report.rank}))
    lightest = min(reports, key=lambda r: r.peak_bytes)
    if len(reports) > 1 and heaviest.peak_bytes > IMBALANCE * max(lightest.peak_bytes, 1):
        extra = heaviest.peak_bytes - lightest.peak_bytes
        findings.append(Finding(
            kind="imbalance", severity="warning",
            title=f"rank {heaviest.rank} peaks {format_bytes(extra)} above rank {lightest.rank}",
            detail=("Peak memory per rank: " + ", ".join(f"rank {r.rank} {format_bytes(r.peak_bytes)}" for r in reports)
                    + f". Rank {heaviest.rank} runs out first: look at it first (uneven data shards, work "
                      "done only on one rank such as logging or evaluation, or a rank keeping extra tensors)."),
            bytes=extra,
            remedy=f"Compare rank {heaviest.rank}'s report with rank {lightest.rank}'s: ranks[] in the JSON.",
            evidence={"peaks": {str(r.rank): r.peak_bytes for r in reports}},
        ))
    notes = list(heaviest.notes) + [f"oomdoctor: warning: no report from rank {r}" for r in (missing or [])]
    return replace(heaviest, findings=findings, ranks=list(reports), rank=None, notes=notes,
                   exit=reports[0].exit if reports[0].rank == 0 else heaviest.exit)


def finish_rank(report: Report, json_path: str | None, rank: Rank) -> Report | None:
    """Write this rank's report; on rank 0, return the merged report (None elsewhere)."""
    write_json(replace(report, rank=rank.rank), rank_path(json_path, rank))
    if rank.rank != 0:
        return None
    reports, missing = collect(json_path, rank)
    return merge(sorted(reports, key=lambda r: r.rank), missing)
