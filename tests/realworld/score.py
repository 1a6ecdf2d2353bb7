"""Score oomdoctor on the real-world corpus: `python tests/realworld/score.py [--workers N] [NAME...]`.

Prints, for `oomdoctor run` and then `oomdoctor lint`, one row per script (what was expected,
what oomdoctor said, hit or miss) and the totals: bugs found at the exact line, and false
findings (of kinds retained-graph, missing-no-grad, memory-growth) on the fixed and clean
scripts. NAMEs (`bugs/foo`, or a part of a name) restrict the run. Exit code 0 always: it
measures, the test suite judges.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realworld.corpus import Case, cases, lint, run_all  # noqa: E402


def _said(findings: list[dict]) -> str:
    return ", ".join(f"{f['kind']}@{f['file']}:{f['line']}" for f in findings) or "-"


def _expected(case: Case) -> str:
    return ", ".join(f"{kind}@{file}:{line}" for kind, file, line in sorted(case.expected())) or "none"


def _hit(case: Case, findings: list[dict]) -> bool:
    found = {(f["kind"], f["file"], f["line"]) for f in findings}
    return case.expected() <= found if case.group == "bugs" else not found


def _table(title: str, selected: list[Case], said: dict[str, list[dict]], failed: dict[str, str]) -> None:
    print(f"\n## {title}\n")
    print(f"{'script':44} {'expected':40} {'result':6} oomdoctor said")
    for case in selected:
        findings = said[case.name]
        result = "ERROR" if case.name in failed else ("hit" if _hit(case, findings) else "MISS")
        print(f"{case.name:44} {_expected(case):40} {result:6} {failed.get(case.name) or _said(findings)}")
    bugs = [case for case in selected if case.group == "bugs"]
    others = [case for case in selected if case.group != "bugs"]
    exact = sum(_hit(case, said[case.name]) and case.name not in failed for case in bugs)
    false_runs = [case.name for case in others if said[case.name]]
    # One bug, one finding: more findings than EXPECT lines is noise a user has to read through.
    noisy = [case.name for case in bugs if len(said[case.name]) > len(case.expected())]
    print(f"\n{title}: bugs found at the exact line {exact}/{len(bugs)}; "
          f"fixed+clean scripts with a false finding {len(false_runs)}/{len(others)}"
          f" ({sum(len(said[name]) for name in false_runs)} findings); "
          f"bugs with more findings than expected lines {len(noisy)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-run", action="store_true", help="only `oomdoctor lint`")
    args = parser.parse_args()
    selected = [case for case in cases() if not args.names or any(n in case.name for n in args.names)]
    if not args.no_run:
        outcomes = run_all(selected, workers=args.workers)
        failed = {name: f"run failed (exit {o.returncode})" for name, o in outcomes.items() if not o.ok_run}
        _table("oomdoctor run", selected, {name: o.findings for name, o in outcomes.items()}, failed)
    lintable = [case for case in selected if case.group in ("bugs", "clean", "fixed")]
    _table("oomdoctor lint", lintable, lint(lintable), {})


if __name__ == "__main__":
    main()
