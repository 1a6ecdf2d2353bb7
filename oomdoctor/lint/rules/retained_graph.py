"""retained-graph: a tensor that carries its autograd graph is kept in a holder that outlives a step.

Reported at the store (`total += loss`, `losses.append(loss)`, `self.bank = torch.cat([self.bank, f])`),
with the fix: `.item()` for a loss-like scalar, `.detach()` otherwise (`.detach().cpu()` for what a
container keeps); a recurrent state fed back into a forward (`out, hidden = rnn(x, hidden)`) is
detached before the call instead, tensor or tuple. Silent when the holder later feeds a
`backward()` (gradient accumulation) or is emptied every iteration, and, one finding per bug, when
it accumulates over a count or over layers (not over data) in an evaluation loop that
missing-no-grad reports: the graphs kept are that forward's, and `no_grad` removes both.
"""
from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from ..finding import LintFinding
from ..syntax import holder as holder_of
from ..syntax import key, name
from .base import Rule

if TYPE_CHECKING:
    from ..scope import Loop

# Before the call that feeds a recurrent state back: correct for None, a tensor and an LSTM's tuple.
_DETACH_STATE = ("if {k} is not None:  # cut the link to the previous step's graph\n"
                 "    {k} = {k}.detach() if torch.is_tensor({k}) else tuple(s.detach() for s in {k})\n")


class RetainedGraph(Rule):
    def __init__(self, scope):
        super().__init__(scope)
        self.pending: list[tuple[Loop, LintFinding]] = []  # waiting to know whether missing-no-grad covers them

    def rebuilt(self, stmt: ast.stmt, k: str, value: ast.AST) -> None:
        if not self.fed_back(value, k) and not self.leaves(value, k):
            return  # `x = x[idx]`, `x = x.view(...)`: derived from itself alone, no new graph joins it
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
        keeper = scope.kept_by(holder)
        if holder in scope.feeds_backward or keeper is None:
            return
        if self.fed_back(value, holder):
            after = _DETACH_STATE.format(k=holder) + scope.facts.snippet(stmt)
        else:
            edits = [(leaf, ".item()" if scope.scalar_like(leaf) else detach) for leaf in self.leaves(value, holder)]
            after = scope.facts.snippet(stmt, edits)
        finding = LintFinding("retained-graph", scope.facts.file, stmt.lineno, scope.qualname, message,
                              scope.facts.snippet(stmt), after)
        evaluation = scope.evaluation_loop()
        if keeper != "call" and keeper.bounded and not keeper.step and evaluation is not None:
            self.pending.append((evaluation, finding))
        else:
            scope.report(finding)

    def finish(self) -> None:
        for loop, finding in self.pending:
            if not loop.unguarded:  # else the loop's missing-no-grad finding is this same memory
                self.scope.report(finding)

    def fed_back(self, value: ast.AST, holder: str) -> bool:
        """Is `holder` an input of a forward call in `value`: a recurrent state?"""
        return any(isinstance(n, ast.Call) and self.scope.is_forward(n) and
                   any(key(a) == holder for a in list(n.args) + [k.value for k in n.keywords])
                   for n in ast.walk(value))

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
