"""missing-no-grad: a model's forward in an evaluation loop that runs with gradients enabled.

Reported once per loop, at the first such forward call; the fix wraps the loop in
`torch.no_grad()`. An evaluation loop is one started after `model.eval()` or in a function named
like evaluation (`evaluate`, `validate`, `predict`...), that neither back-propagates nor steps.
"""
from __future__ import annotations

import ast
import textwrap

from ..finding import LintFinding
from .base import Rule


class MissingNoGrad(Rule):
    def __init__(self, scope):
        super().__init__(scope)
        self.reported_loops: set[int] = set()

    def forward(self, call: ast.Call) -> None:
        scope = self.scope
        loop = next((lp for lp in scope.loops if lp.evaluating and not lp.step), None)
        if loop is None or id(loop.node) in self.reported_loops:
            return
        self.reported_loops.add(id(loop.node))
        header = scope.facts.header(loop.node)
        scope.report(LintFinding(
            "missing-no-grad", scope.facts.file, call.lineno, scope.qualname,
            f"`{scope.facts.text(call.func)}(...)` runs in an evaluation loop with gradients enabled: each forward "
            f"builds an autograd graph nobody back-propagates",
            header, "with torch.no_grad():\n" + textwrap.indent(header, "    ")))
