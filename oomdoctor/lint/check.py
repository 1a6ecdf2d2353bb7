"""Entry points: source text or files in, findings out.

Contract: `lint_source(text, file)` -> findings in line order, pure; `lint_file(path)` reads one file;
`python_files(paths)` expands folders into their `*.py` files. A missing path, an unreadable or
unparsable file raises `BadInput` (one line). A line ending in `# oomdoctor: ignore` is never reported.

Reads are bounded: only regular files are opened for reading (a FIFO, a device or a socket is a
`BadInput`, checked without blocking), and a file over `MAX_BYTES` raises `TooLarge` (a note, not an
error: generated code is no place for these bugs) without being read whole.
"""
from __future__ import annotations

import ast
import gc
import io
import os
import stat
import tokenize
from pathlib import Path

from ..errors import BadInput
from .facts import FileFacts
from .finding import LintFinding
from .scope import Scope

# A 100,000-line script is ~3 MiB and takes about a minute and 500 MiB to check (the AST is most of
# it); anything larger is generated code or data.
MAX_BYTES = 4 * 2**20


class TooLarge(Exception):
    """A file lint skips for its size: reported as a one-line note."""


def lint_source(source: str, file: str = "<string>") -> list[LintFinding]:
    """Findings for one file's source text, in line order."""
    # The AST and the walk's state make no reference cycles worth collecting; the cyclic collector
    # would only rescan a heap that grows with the file (~15 % of the time on 100,000 lines).
    collecting = gc.isenabled()
    gc.disable()
    try:
        facts = FileFacts(_parse(source, file), source, file)
        findings = _analyse(facts)
    except RecursionError:
        raise BadInput(f"{file}: code nested too deeply to analyse") from None
    finally:
        if collecting:
            gc.enable()
    kept = [f for f in findings if "oomdoctor: ignore" not in facts.lines[f.line - 1]]
    return sorted(kept, key=lambda f: (f.line, f.kind))


def _parse(source: str, file: str) -> ast.Module:
    try:
        return ast.parse(source, filename=file)
    except SyntaxError as exc:
        raise BadInput(f"{file}:{exc.lineno or 0}: cannot parse: {exc.msg}") from None
    except ValueError as exc:  # null bytes in the source
        raise BadInput(f"{file}: cannot parse: {exc}") from None
    except (RecursionError, MemoryError):  # python itself cannot compile such a file either
        raise BadInput(f"{file}: code nested too deeply to parse") from None


def _analyse(facts: FileFacts) -> list[LintFinding]:
    scopes = [Scope(facts, node, qualname, cls) for node, qualname, cls in facts.scopes()]
    for scope in scopes:  # the first round learns which local functions return a graph...
        scope.run()
    facts.returns_graph = {scope.node.name for scope in scopes if scope.returns_graph}
    facts.forwards = {scope.node.name for scope in scopes if scope.returns_graph and scope.runs_forward} - \
        facts.does_backward  # a function that also back-propagates is a training step, not a forward
    for scope in scopes:  # ...and only a scope that calls one of them can see anything new
        if scope.called & facts.returns_graph:
            scope.run()
    return [f for scope in scopes for f in scope.findings.values()]


def lint_file(path: str | Path) -> list[LintFinding]:
    """Findings for one Python file; `BadInput` when it is missing, unreadable, not a regular file or
    not Python, `TooLarge` when it is over `MAX_BYTES`."""
    return lint_source(read_source(path), str(path))


def read_source(path: str | Path) -> str:
    """The text of a Python file as python reads it (encoding cookie, BOM, newlines), read with bounds."""
    try:
        if stat.S_ISDIR(os.stat(path).st_mode):
            raise BadInput(f"{path} is a folder; give a Python file")
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on the open file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise BadInput(f"{path} is not a regular file")
            data = handle.read(MAX_BYTES + 1)  # the size may change under us: never read more
        if len(data) > MAX_BYTES:
            raise TooLarge(f"skipped {path}: {max(info.st_size, len(data)) / 2**20:.1f} MiB, over lint's "
                           f"{MAX_BYTES // 2**20} MiB limit")
        buffer = io.BytesIO(data)
        encoding, _ = tokenize.detect_encoding(buffer.readline)  # honours an encoding cookie, like python
        buffer.seek(0)
        return io.TextIOWrapper(buffer, encoding, line_buffering=True).read()
    except FileNotFoundError:
        raise BadInput(f"no such file or folder: {path}") from None
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise BadInput(f"cannot read {path}: {reason}") from None


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
