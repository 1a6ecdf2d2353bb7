"""`oomdoctor lint`: check scripts for memory bugs without running them (see oomdoctor/lint/).

Findings go to stdout as text (`file:line: KIND message`, why, and the fix as before/after) or as
JSON (`oomdoctor.lint/1`); a file that cannot be read or parsed (or is not a regular file) is one
error line on stderr and the others are still checked; a file too large to be a script is skipped
with a one-line note on stderr. Exit code: 2 after any error, else 1 when something was found, else 0.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import List

import typer

from ..errors import BadInput
from ..lint import EXPLANATIONS, LintFinding, TooLarge, lint_file, python_files
from ._app import app

SCHEMA = "oomdoctor.lint/1"


@app.command()
def lint(
    paths: List[str] = typer.Argument(..., metavar="PATH", help="Python files, or folders to search for *.py."),
    as_json: bool = typer.Option(False, "--json", help=f"Print the findings as JSON ({SCHEMA}) instead of text."),
) -> int:
    """Find memory bugs in scripts without running them: graphs kept across steps
    (`total += loss`, `losses.append(loss)`), evaluation loops without `torch.no_grad()`,
    caches that only grow.

    Exit code 1 when something is found, 0 when nothing is, 2 when a file cannot be read or parsed.
    A line ending in `# oomdoctor: ignore` is never reported.
    """
    files = python_files(paths)
    findings: list[LintFinding] = []
    errors: list[str] = []
    skipped: list[str] = []
    for path in files:
        try:
            findings += lint_file(path)
        except BadInput as exc:  # one bad file must not hide the findings in the others
            errors.append(str(exc))
        except TooLarge as note:
            skipped.append(str(note))

    checked = len(files) - len(errors) - len(skipped)
    if as_json:
        print(json.dumps({"schema": SCHEMA, "files_checked": checked, "findings": [asdict(f) for f in findings],
                          "errors": errors, "skipped": skipped}, indent=2))
    else:
        for finding in findings:
            print(render(finding))
        if findings:
            in_files = len({f.file for f in findings})
            print(f"{_count(len(findings), 'finding')} in {_count(in_files, 'file')} ({checked} checked)")
        elif not errors:
            print(f"no findings in {_count(checked, 'file')}")
    for note in skipped:
        print(f"oomdoctor: note: {note}", file=sys.stderr)
    for error in errors:
        print(f"oomdoctor: error: {error}", file=sys.stderr)
    return 2 if errors else 1 if findings else 0


def render(finding: LintFinding) -> str:
    """One finding as text: the grep-able first line, why it matters, and the fix as a diff."""
    lines = [f"{finding.file}:{finding.line}: {finding.kind} {finding.message} (in {finding.function})",
             f"  why: {EXPLANATIONS[finding.kind]}", "  fix:"]
    lines += [f"    - {line}" for line in finding.before.splitlines()]
    lines += [f"    + {line}" for line in finding.after.splitlines()]
    return "\n".join(lines) + "\n"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
