"""missing-no-grad: a model's forward whose graph nobody back-propagates, run with gradients enabled.

Two shapes, the fix being `torch.no_grad()` in both:
- an evaluation loop (started after `model.eval()` or in a function named like evaluation:
  `evaluate`, `validate`, `predict`...) that neither back-propagates nor steps: reported once per
  loop, at its first forward call;
- one call, in any loop, whose output is only looked at: every read of `out = model(x)` before it is
  bound again is a number, a shape, a detached copy or a picture (`save_image(out.detach())`), as
  for samples drawn from a GAN's generator in its training loop. Not for a frozen model
  (`requires_grad_(False)`), inside a module's own methods, in test files, or for a result never read.
"""
from __future__ import annotations

import ast
import textwrap

from ..finding import LintFinding
from ..reach import only_shown
from ..syntax import key
from .base import Rule


class MissingNoGrad(Rule):
    def __init__(self, scope):
        super().__init__(scope)
        self.reported_loops: set[int] = set()

    def forward(self, call: ast.Call) -> None:
        loop = self.scope.evaluation_loop()
        if loop is None:
            self.shown_only(call)
        elif id(loop.node) not in self.reported_loops:
            self.reported_loops.add(id(loop.node))
            header = self.scope.facts.header(loop.node)
            self.report(call, "runs in an evaluation loop with gradients enabled: each forward builds an "
                              "autograd graph nobody back-propagates", header)

    def shown_only(self, call: ast.Call) -> None:
        scope = self.scope
        facts = scope.facts
        if not scope.loops or scope.is_module_method or facts.is_test_file or key(call.func) in facts.frozen:
            return
        stmts, index, _ = scope.path[-1]
        stmt = stmts[index]
        if not (isinstance(stmt, ast.Assign) and stmt.value is call and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id != "_"):
            return
        out = stmt.targets[0].id
        if facts.memo(("shown only", id(stmt)), lambda: only_shown(scope.path, out)):
            self.report(call, f"runs with gradients enabled, but `{out}` is only looked at (numbers, detached "
                              f"copies, images), never back-propagated: the forward's graph is built for nothing",
                        scope.facts.snippet(stmt))

    def report(self, call: ast.Call, why: str, before: str) -> None:
        scope = self.scope
        scope.report(LintFinding("missing-no-grad", scope.facts.file, call.lineno, scope.qualname,
                                 f"`{scope.facts.text(call.func)}(...)` {why}",
                                 before, "with torch.no_grad():\n" + textwrap.indent(before, "    ")))
