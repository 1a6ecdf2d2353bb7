"""Jupyter and IPython: `%load_ext oomdoctor`, then `%%oomdoctor` on a cell, `%oomdoctor` on a line.

    %%oomdoctor [--json PATH] [--html PATH] [--capacity SIZE] [--exact] [--quiet]
    train(model, loader)

    %oomdoctor [options] train(model, loader)

The cell (or statement) runs under a session, each optimizer step a step as usual, and its report
is displayed below it: rich HTML in Jupyter, text in a terminal IPython; `--json`/`--html` also
write it, `--quiet` only writes it. When the code raises, an out-of-memory error included, the
report (with its post-mortem) is displayed first and the exception then propagates, so IPython
shows its traceback as usual. Like `%%time`, the magic's value is that of the code's last
expression. Inside a session that is already running (a decorated step's, say), the code joins
it and that session reports when it ends.
"""
from __future__ import annotations

import ast
import io
import re
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from rich.console import Console

from .errors import OomdoctorError
from .integrations import Attachment
from .report.console import render
from .report.model import Report

WIDTH = 100  # columns of the rendered report: what the terminal report uses by default
# Leading options; what follows the last one is the statement, kept exactly as typed.
_OPTION = re.compile(
    r"""\s*--(?P<name>json|html|capacity)(?:=|\s+)(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>\S+))"""
    r"""|\s*--(?P<flag>quiet|exact)(?=\s|$)"""
)
_HTML = (
    '<pre style="white-space:pre;overflow-x:auto;line-height:normal;'
    "font-family:Menlo,'DejaVu Sans Mono',consolas,'Courier New',monospace\">{code}</pre>"
)


def load_ipython_extension(ipython: Any) -> None:
    """Called by `%load_ext oomdoctor`."""
    ipython.register_magics(OomdoctorMagics)


class ReportView:
    """A report as IPython displays it: rich HTML in Jupyter, plain text elsewhere."""

    def __init__(self, report: Report):
        self.report = report

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict[str, str]:
        # force_jupyter=False: inside a kernel rich would otherwise display it a second time itself.
        console = Console(file=io.StringIO(), record=True, width=WIDTH, color_system="truecolor",
                          highlight=False, force_jupyter=False)
        console.print(render(self.report))
        return {
            "text/plain": console.export_text(clear=False),
            "text/html": console.export_html(inline_styles=True, code_format=_HTML),
        }

    def __repr__(self) -> str:
        return self._repr_mimebundle_()["text/plain"]


def parse_options(line: str) -> tuple[dict[str, Any], str]:
    """Split `--json PATH --quiet stmt` into options and the statement that follows them."""
    options: dict[str, Any] = {"json": None, "html": None, "capacity": None, "quiet": False, "exact": False}
    position = 0
    while match := _OPTION.match(line, position):
        if match["flag"]:
            options[match["flag"]] = True
        else:
            options[match["name"]] = next(v for v in (match["dq"], match["sq"], match["bare"]) if v is not None)
        position = match.end()
    rest = line[position:].strip()
    if rest.startswith("--") and not rest.startswith("--("):
        raise UsageError(f"%oomdoctor: cannot read option {rest.split()[0]!r} "
                         "(options: --json PATH, --html PATH, --capacity SIZE, --exact, --quiet)")
    return options, rest


@magics_class
class OomdoctorMagics(Magics):
    @line_cell_magic
    def oomdoctor(self, line: str, cell: str | None = None) -> Any:
        """Run a cell (`%%oomdoctor`) or one statement (`%oomdoctor STMT`) and report its memory.

        Options: --json PATH, --html PATH (write the report), --capacity SIZE (behave as if the
        device had SIZE bytes: past it an out-of-memory error, also on CPU), --exact (watch every
        op of every step), --quiet (display nothing, only write the files).
        """
        __tracebackhide__ = True  # noqa: F841  (a traceback shows the user's code, not this frame)
        options, statement = parse_options(line)
        if cell is not None and statement:
            raise UsageError(f"%%oomdoctor takes only options on its line, not {statement!r}")
        source = cell if cell is not None else statement
        if not source.strip():
            raise UsageError("%oomdoctor needs a statement to run, e.g. %oomdoctor train(model)")
        quiet = options.pop("quiet")
        try:
            attachment = Attachment(quiet=True, **options)
        except OomdoctorError as exc:
            raise UsageError(f"%oomdoctor: {exc}") from None
        body, last = self._compile(source)  # a syntax error is reported before anything runs
        attachment.open()
        try:
            value = self._run(body, last)
        except BaseException as exc:
            self._show(attachment.close(exc), quiet)
            raise
        self._show(attachment.close(), quiet)
        return value

    def _compile(self, source: str) -> tuple[Any, Any]:
        """The code as IPython would run it (magics inside, AST transformers), registered with
        its source so tracebacks and the report show the cell's lines; its last expression
        apart, to give back its value."""
        shell = self.shell
        source = shell.transform_cell(source)
        filename = shell.compile.cache(source, shell.execution_count)
        tree = shell.transform_ast(shell.compile.ast_parse(source, filename=filename))
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = shell.compile(ast.Expression(tree.body.pop().value), filename, "eval")
        return shell.compile(tree, filename, "exec"), last

    def _run(self, body: Any, last: Any) -> Any:
        __tracebackhide__ = True  # noqa: F841
        shell = self.shell
        exec(body, shell.user_global_ns, shell.user_ns)
        return eval(last, shell.user_global_ns, shell.user_ns) if last is not None else None

    @staticmethod
    def _show(report: Report | None, quiet: bool) -> None:
        if report is None:
            print("oomdoctor: this code ran inside a session that was already running; "
                  "that session reports when it ends", file=sys.stderr)
        elif not quiet:
            display(ReportView(report))
