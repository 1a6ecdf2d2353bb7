"""The real-world corpus: find its scripts, read what each expects, run oomdoctor on them.

Contract, shared by tests/test_realworld.py and tests/realworld/score.py:
- `bugs/NAME.py` reproduces a public bug report; each line ending in `# EXPECT: KIND` is where a
  finding of KIND must point (file and line). A script may import a sibling helper module named
  `_*.py` (a library of the reporter's project); EXPECT lines in such a helper belong to the
  scripts that import it. `fixed/NAME.py` is the same script with the fix, `clean/NAME.py` a
  pattern that must stay silent: neither may get a finding of a `KINDS` kind.
- A script runs under `oomdoctor run --quiet --json OUT`, exactly as a user would. One whose
  source has a line `# RUN: python` runs under plain `python` instead (a notebook-like block that
  opens its own `oomdoctor.track(...)`); it writes its report to `$REALWORLD_REPORT`.
- `expected_misses.txt` lists the cases the current detection gets wrong (`bugs/NAME`, or
  `fixed/NAME` / `clean/NAME` for a false finding), one per line with the mechanism after `: `.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
KINDS = ("retained-graph", "missing-no-grad", "memory-growth")
GROUPS = ("bugs", "fixed", "clean")
EXPECT = re.compile(r"#\s*EXPECT:\s*([a-z-]+)\s*$")
RUN_PYTHON = re.compile(r"^#\s*RUN:\s*python\s*$", re.MULTILINE)
HELPER_IMPORT = re.compile(r"^\s*(?:from|import)\s+(_\w+)", re.MULTILINE)
TIMEOUT_S = 240


@dataclass(frozen=True)
class Case:
    """One script of the corpus, named `group/NAME` (e.g. `bugs/yolo_total_loss_dict`)."""

    group: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.group}/{self.path.stem}"

    @property
    def source(self) -> str:
        return self.path.read_text()

    def helpers(self) -> list[Path]:
        found = (self.path.parent / f"{module}.py" for module in HELPER_IMPORT.findall(self.source))
        return [path for path in found if path.exists()]

    def expected(self) -> set[tuple[str, str, int]]:
        """(kind, file name, line) of every `# EXPECT:` marker of the script and its helpers."""
        marks = set()
        for path in [self.path, *self.helpers()]:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                match = EXPECT.search(line)
                if match:
                    marks.add((match.group(1), path.name, number))
        return marks

    @property
    def under_python(self) -> bool:
        return bool(RUN_PYTHON.search(self.source))


@dataclass
class Outcome:
    """What oomdoctor said about one case."""

    case: Case
    returncode: int
    stderr: str
    findings: list[dict] = field(default_factory=list)  # kind, file (name), line; KINDS only
    report_written: bool = False

    def found(self) -> set[tuple[str, str, int]]:
        return {(f["kind"], f["file"], f["line"]) for f in self.findings}

    @property
    def ok_run(self) -> bool:
        return self.returncode == 0 and self.report_written

    @property
    def hit(self) -> bool:
        """A bug: every EXPECT marker found at its exact file and line. Else: no finding at all."""
        if self.case.group == "bugs":
            return self.ok_run and self.case.expected() <= self.found()
        return self.ok_run and not self.findings


def cases(groups: tuple[str, ...] = GROUPS) -> list[Case]:
    return [Case(group, path) for group in groups
            for path in sorted((HERE / group).glob("*.py")) if not path.name.startswith("_")]


def expected_misses() -> dict[str, str]:
    """`group/NAME` -> the mechanism the current detection misses (expected_misses.txt)."""
    misses = {}
    for line in (HERE / "expected_misses.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition(":")
            misses[name.strip()] = reason.strip()
    return misses


def _env(report: Path) -> dict[str, str]:
    # One intra-op thread each: cases run in parallel on a 2-core machine.
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "100",
            "OOMDOCTOR_DEVICE": "cpu", "REALWORLD_REPORT": str(report)}


def _findings(report: dict) -> list[dict]:
    kept = []
    for finding in report.get("findings", []):
        location = finding.get("location") or {}
        if finding["kind"] in KINDS:
            kept.append({"kind": finding["kind"], "file": Path(location.get("file") or "?").name,
                         "line": location.get("line"), "title": finding.get("title", "")})
    return kept


def run_case(case: Case, folder: Path) -> Outcome:
    report = folder / f"{case.group}-{case.path.stem}.json"
    if case.under_python:
        command = [sys.executable, str(case.path)]
    else:
        command = [sys.executable, "-m", "oomdoctor", "run", "--quiet", "--json", str(report), str(case.path)]
    try:
        result = subprocess.run(command, env=_env(report), capture_output=True, text=True,
                                timeout=TIMEOUT_S, cwd=case.path.parent)
    except subprocess.TimeoutExpired:
        return Outcome(case, returncode=124, stderr=f"timed out after {TIMEOUT_S} s")
    outcome = Outcome(case, result.returncode, result.stderr[-4000:])
    if report.exists():
        outcome.report_written = True
        outcome.findings = _findings(json.loads(report.read_text()))
    return outcome


def run_all(selected: list[Case], workers: int = 2) -> dict[str, Outcome]:
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = pool.map(lambda case: run_case(case, Path(folder)), selected)
        return {outcome.case.name: outcome for outcome in outcomes}


def lint(selected: list[Case]) -> dict[str, list[dict]]:
    """`oomdoctor lint --json` over the given cases (one process): findings per case name."""
    by_path = {str(case.path): case.name for case in selected}
    helpers = {str(helper): case.name for case in selected for helper in case.helpers()}
    result = subprocess.run([sys.executable, "-m", "oomdoctor", "lint", "--json", *by_path, *helpers],
                            env=_env(Path(os.devnull)), capture_output=True, text=True, timeout=TIMEOUT_S,
                            cwd=REPO)
    per_case: dict[str, list[dict]] = {name: [] for name in by_path.values()}
    for finding in json.loads(result.stdout)["findings"]:
        path = str((REPO / finding["file"]).resolve())
        owner = by_path.get(path) or helpers.get(path)
        if owner is not None and finding["kind"] in KINDS:
            per_case[owner].append({"kind": finding["kind"], "file": Path(path).name, "line": finding["line"]})
    return per_case
