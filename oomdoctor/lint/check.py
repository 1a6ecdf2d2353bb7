"""Entry points: source text or files in, findings out.

Contract: `lint_source(text, file)` -> findings in line order, pure; `lint_file(path)` reads one file;
`python_files(paths)` expands folders into their `*.py` files. A missing path, an unreadable or
unparsable file raises `BadInput` (one line). A line ending in `# oomdoctor: ignore` is never reported.
"""
from __future__ import annotations

import ast
import tokenize
from pathlib import Path

from ..errors import BadInput
from .facts import FileFacts
from .finding import LintFinding
from .scope import Scope


def lint_source(source: str, file: str = "<string>") -> list[LintFinding]:
    """Findings for one file's source text, in line order."""
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError as exc:
        raise BadInput(f"{file}:{exc.lineno or 0}: cannot parse: {exc.msg}") from None
    except ValueError as exc:  # null bytes in the source
        raise BadInput(f"{file}: cannot parse: {exc}") from None
    try:
        facts = FileFacts(tree, source, file)
        findings = _analyse(facts)
    except RecursionError:
        raise BadInput(f"{file}: code nested too deeply to analyse") from None
    kept = [f for f in findings if "oomdoctor: ignore" not in facts.lines[f.line - 1]]
    return sorted(kept, key=lambda f: (f.line, f.kind))


def _analyse(facts: FileFacts) -> list[LintFinding]:
    scopes = [Scope(facts, node, qualname, cls) for node, qualname, cls in facts.scopes()]
    for _ in range(2):  # the first round learns which local functions return a graph
        for scope in scopes:
            scope.run()
        facts.returns_graph = {scope.node.name for scope in scopes if scope.returns_graph}
    return [f for scope in scopes for f in scope.findings.values()]


def lint_file(path: str | Path) -> list[LintFinding]:
    """Findings for one Python file; `BadInput` when it is missing, unreadable or not Python."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"no such file or folder: {path}")
    if p.is_dir():
        raise BadInput(f"{path} is a folder; give a Python file")
    try:
        with tokenize.open(p) as handle:  # honours an encoding cookie, like python does
            text = handle.read()
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise BadInput(f"cannot read {path}: {reason}") from None
    return lint_source(text, str(path))


def python_files(paths: list[str]) -> list[Path]:
    """The files to check: files as given, folders searched for `*.py` (hidden and cache folders
    skipped), in a stable order. A missing path fails before anything is checked."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise BadInput(f"no such file or folder: {raw}")
        if p.is_dir():
            found += sorted(f for f in p.rglob("*.py") if f.is_file() and not _skipped(f.relative_to(p)))
        else:
            found.append(p)
    return list(dict.fromkeys(found))


def _skipped(relative: Path) -> bool:
    return any(part.startswith(".") or part in ("__pycache__", "site-packages", "node_modules")
               for part in relative.parts[:-1])
