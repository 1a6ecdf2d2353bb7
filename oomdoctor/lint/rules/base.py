"""The hooks a lint rule may override (see rules/__init__.py)."""
from __future__ import annotations

import ast
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..scope import Scope


class Rule:
    """Hooks called as the walk meets a statement; each does nothing unless a rule overrides it."""

    def __init__(self, scope: Scope):
        self.scope = scope

    def rebuilt(self, stmt: ast.stmt, key: str, value: ast.AST) -> None:
        """`key = f(key, ...)`: a key that carries a graph, rebuilt from itself into a new graph."""

    def added(self, stmt: ast.AugAssign, holder: str, value: ast.AST) -> None:
        """`holder += value` (or `-=`) with gradients on, where `value` carries a graph."""

    def appended(self, stmt: ast.Expr, holder: str, value: ast.AST) -> None:
        """`holder.append(value)` (also extend, insert, appendleft)."""

    def forward(self, call: ast.Call) -> None:
        """A model's forward, called while gradients are certainly on."""

    def finish(self) -> None:
        """The walk of the function is over: report what waited for the whole picture."""

