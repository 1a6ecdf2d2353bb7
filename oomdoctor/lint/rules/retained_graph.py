"""retained-graph: a tensor that carries its autograd graph is kept in a holder that outlives a step.

Reported at the store (`total += loss`, `losses.append(loss)`, `self.bank = torch.cat([self.bank, f])`),
with the fix: `.item()` for a loss-like scalar, `.detach()` otherwise (`.detach().cpu()` for what a
container keeps). Silent when the holder later feeds a `backward()` (gradient accumulation) or is
emptied every iteration.
"""
from __future__ import annotations

import ast

from ..finding import LintFinding
from ..syntax import holder as holder_of
from ..syntax import key, name
from .base import Rule


class RetainedGraph(Rule):
    def rebuilt(self, stmt: ast.stmt, k: str, value: ast.AST) -> None:
        self.retained(stmt, k, value, f"`{k}` is rebuilt from itself and a tensor that carries its autograd "
                                      f"graph: each step's graph links to the previous one's")

    def added(self, stmt: ast.AugAssign, holder: str, value: ast.AST) -> None:
        self.retained(stmt, holder, value, f"`{holder}` adds up `{self.scope.facts.text(value)}`, a tensor that "
                                           f"carries its autograd graph: every step's graph stays alive")

    def appended(self, stmt: ast.Expr, holder: str, value: ast.AST) -> None:
        if self.scope.taint(value):
            # A container that grows per step: kept values are better off the device too.
            self.retained(stmt, holder, value, f"`{holder}` keeps `{self.scope.facts.text(value)}`, a tensor "
                                               f"that carries its autograd graph: it grows by one graph per step",
                          ".detach().cpu()")

    def retained(self, stmt: ast.stmt, holder: str, value: ast.AST, message: str, detach: str = ".detach()") -> None:
        scope = self.scope
        if holder in scope.feeds_backward or not scope.outlives_step(holder):
            return
        edits = [(leaf, ".item()" if scope.scalar_like(leaf) else detach) for leaf in self.leaves(value, holder)]
        scope.report(LintFinding("retained-graph", scope.facts.file, stmt.lineno, scope.qualname, message,
                                 scope.facts.snippet(stmt), scope.facts.snippet(stmt, edits)))

    def leaves(self, node: ast.AST, holder: str) -> list[ast.AST]:
        """The parts of a value that bring a graph in, other than the holder itself: what to detach."""
        if key(node) == holder or holder_of(node) == holder or not self.scope.taint(node):
            return []
        if isinstance(node, ast.BinOp):
            return self.leaves(node.left, holder) + self.leaves(node.right, holder)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return [leaf for e in node.elts for leaf in self.leaves(e, holder)]
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
            return self.leaves(node.value, holder)  # torch.cat([...])[-k:]
        if isinstance(node, ast.Call) and name(node.func) in ("cat", "stack", "concat", "hstack", "vstack"):
            return [leaf for a in node.args for leaf in self.leaves(a, holder)]
        return [node]
