"""The real-world corpus (tests/realworld/) under `oomdoctor run --json`, as a user runs it.

Each `bugs/` script reproduces a public bug report and marks with `# EXPECT: KIND` the line the
finding must point at: the run must report that kind at that file and line. Its `fixed/` twin and
the `clean/` scripts (patterns that look like leaks but are not) must get no finding of kind
retained-graph, missing-no-grad or memory-growth. What the detection gets wrong today is listed,
with its mechanism, in tests/realworld/expected_misses.txt and runs as a strict xfail: fixing the
detection flips it to XPASS, which fails until the line is removed from that list.

The scripts run two at a time with one intra-op thread each (two cores), hence `slow`; CI runs it.
"""
from __future__ import annotations

import pytest

from realworld.corpus import Case, Outcome, cases, expected_misses, run_all

CASES = cases()
MISSES = expected_misses()


def _param(case: Case):
    marks = [pytest.mark.slow]
    if case.name in MISSES:
        marks.append(pytest.mark.xfail(strict=True, reason=MISSES[case.name]))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture(scope="module")
def outcomes(request) -> dict[str, Outcome]:
    """Runs the cases selected in this session (all of them, or those `-k` kept), two at a time."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})]
    return run_all(selected)


def test_every_miss_names_a_case_of_the_corpus():
    assert set(MISSES) <= {case.name for case in CASES}


def test_every_bug_has_a_fixed_twin_and_an_expected_line():
    bugs = [case for case in CASES if case.group == "bugs"]
    fixed = {case.path.stem for case in CASES if case.group == "fixed"}
    assert len(bugs) >= 20 and len([case for case in CASES if case.group == "clean"]) >= 8
    for case in bugs:
        assert case.path.stem in fixed, case.name
        assert case.expected(), f"{case.name} marks no `# EXPECT:` line"
        assert "https://" in case.source.split("\n", 3)[0], f"{case.name} cites no source on line 1"


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_realworld_script(outcomes, case):
    outcome = outcomes[case.name]
    assert outcome.ok_run, f"exit {outcome.returncode}, report written: {outcome.report_written}\n{outcome.stderr}"
    if case.group == "bugs":
        missing = case.expected() - outcome.found()
        assert not missing, f"expected {sorted(missing)}; oomdoctor said {outcome.findings}"
    else:
        assert outcome.findings == [], f"false finding(s) on a {case.group} script: {outcome.findings}"
