"""memory-growth: a detached copy of a tensor appended at every training step to a container that
nothing ever empties or bounds (no pop, del, slice, clear, `deque(maxlen=...)` anywhere in the file).

Silent for appends under an `if` (warm-up caches, periodic snapshots), for host copies (`.cpu()`)
and for loss-like scalars; the fix keeps a bounded window.
"""
from __future__ import annotations

import ast

from ..finding import LintFinding
from ..syntax import KEEP_CHAIN
from .base import Rule


class MemoryGrowth(Rule):
    def appended(self, stmt: ast.Expr, holder: str, value: ast.AST) -> None:
        scope = self.scope
        if scope.taint(value) or not self.grows(holder, value):
            return  # a value with a graph is the retained-graph rule's
        container = stmt.value.func.value
        before = scope.facts.snippet(stmt)
        scope.report(LintFinding(
            "memory-growth", scope.facts.file, stmt.lineno, scope.qualname,
            f"`{holder}` gets a copy of `{scope.facts.text(value)}` at every step and is never emptied",
            before, before + f"\ndel {scope.facts.text(container)}[:-100]  # keep a bounded window, or store "
                             f"numbers (.item())"))

    def grows(self, holder: str, value: ast.AST) -> bool:
        """A tensor copy appended at every training step to a holder that nothing ever shrinks."""
        scope = self.scope
        if scope.conditional or holder in scope.facts.shrunk or holder in scope.feeds_backward or not scope.loops:
            return False
        chain, node = [], value
        while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in KEEP_CHAIN:
            chain.append(node.func.attr)
            node = node.func.value
        if not {"detach", "clone"} & set(chain) or not scope.taint(node) or scope.scalar_like(node):
            return False
        return scope.outlives_step(holder, steps_only=True)
