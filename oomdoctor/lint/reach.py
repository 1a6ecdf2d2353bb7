"""Where one binding of a name is read before the name is bound again: a small def-use search.

Contract: `only_shown(path, name)` answers, for the assignment at the end of `path` (the blocks
that enclose it, outermost first, each with the index of the statement and the loop it is the body
of, if any), whether every read of that binding is a number, a shape or a detached copy (`.item()`,
`.detach()`, `.shape`, `float(v)`) or a picture (`save_image(v)`), with at least one read of its
values (a shape check alone says nothing about intent). It
follows the code the binding can reach: the rest of each enclosing block, the next iteration of
each enclosing loop up to the point where the name is certainly rebound, and what follows the loop.
The search is bounded (`BUDGET` statements and expression nodes looked at): past it, the answer is
no, which keeps lint silent and its time linear.
"""
from __future__ import annotations

import ast

from .syntax import DETACHING, NUMBER_BUILTINS, PLAIN_ATTRS, target_keys

BUDGET = 1000
# Functions that only look at a tensor: torchvision's image writers run under no_grad.
VIEWERS = frozenset({"save_image", "make_grid", "imshow", "add_image", "add_images", "print"})
_METADATA = frozenset({"shape", "dtype", "device", "ndim", "size", "dim", "numel", "nelement", "is_cuda", "layout",
                       "requires_grad", "is_leaf", "grad_fn", "stride", "is_contiguous", "data_ptr", "element_size"})


class _OutOfBudget(Exception):
    pass


class _Reads:
    """The reads of one binding of `name`, statement by statement, within a budget."""

    def __init__(self, name: str):
        self.name, self.left, self.seen = name, BUDGET, 0

    def block(self, stmts, start: int = 0, stop: int | None = None) -> tuple[bool, bool]:
        """(read in a way that keeps the graph, certainly rebound by the end) for `stmts[start:stop]`
        (indices, not a slice: a copy per call would make long loops quadratic)."""
        for index in range(start, len(stmts) if stop is None else stop):
            self.spend()
            kept, rebound = self.stmt(stmts[index])
            if kept or rebound:
                return kept, rebound
        return False, False

    def stmt(self, s: ast.stmt) -> tuple[bool, bool]:
        if isinstance(s, ast.If):
            return self.branches(s.test, [s.body, s.orelse])
        if isinstance(s, (ast.With, ast.AsyncWith)):
            if any(self.kept(i.context_expr) for i in s.items):
                return True, False
            return self.block(s.body)
        if isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            header = s.test if isinstance(s, ast.While) else s.iter
            kept = self.kept(header) or self.block(s.body)[0] or self.block(s.orelse)[0]
            return kept, False  # the body may not run
        if isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            kept = any(self.block(b)[0] for b in [s.body, s.orelse] + [h.body for h in s.handlers])
            finally_kept, rebound = self.block(s.finalbody)
            return kept or finally_kept, rebound
        if isinstance(s, getattr(ast, "Match", ())):
            return self.branches(s.subject, [c.body for c in s.cases] + [[]])
        if isinstance(s, ast.AugAssign) and self.name in target_keys(s.target):
            return True, False
        if self.kept(s):
            return True, False
        if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            return False, any(isinstance(t, ast.Name) and t.id == self.name for t in targets)
        if isinstance(s, ast.Delete):
            return False, any(isinstance(t, ast.Name) and t.id == self.name for t in s.targets)
        return False, False

    def branches(self, test: ast.AST, bodies) -> tuple[bool, bool]:
        if self.kept(test):
            return True, False
        ends = [self.block(body) for body in bodies]
        return any(k for k, _ in ends), all(r for _, r in ends)

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _OutOfBudget

    def kept(self, node: ast.AST) -> bool:
        """Is the name read anywhere in `node` other than as a number, a shape, a detached copy or a
        picture? Nested functions count: a closure keeps what it reads."""
        stack: list[tuple[ast.AST, ast.AST | None]] = [(node, None)]
        while stack:
            n, parent = stack.pop()
            self.spend()
            if isinstance(n, ast.Name) and n.id == self.name and isinstance(n.ctx, ast.Load):
                if not _looks_only(n, parent):
                    return True
                self.seen += not (isinstance(parent, ast.Attribute) and parent.attr in _METADATA
                                  or isinstance(parent, ast.Compare))
            stack += [(child, n) for child in ast.iter_child_nodes(n)]
        return False


def _looks_only(name: ast.Name, parent: ast.AST | None) -> bool:
    if isinstance(parent, ast.Compare) and all(isinstance(op, (ast.Is, ast.IsNot)) for op in parent.ops):
        return True  # `out is None`
    if isinstance(parent, ast.Attribute):  # `.backward()` is the one read that uses the graph
        return parent.attr != "backward" and (parent.attr in DETACHING or parent.attr in PLAIN_ATTRS)
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and name in parent.args:
        return parent.func.id in NUMBER_BUILTINS or parent.func.id in VIEWERS
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Attribute) and name in parent.args:
        return parent.func.attr in VIEWERS  # vutils.save_image(v), writer.add_image(tag, v)
    return False


def only_shown(path: list[tuple[list, int, ast.AST | None]], name: str) -> bool:
    reads = _Reads(name)
    try:
        for stmts, index, loop in reversed(path):
            kept, rebound = reads.block(stmts, index + 1)
            if kept:
                return False
            if rebound:
                return reads.seen > 0
            if loop is not None:  # the next iteration, up to this statement again; then after the loop
                header = [loop.test] if isinstance(loop, ast.While) else []
                if any(reads.kept(h) for h in header) or reads.block(stmts, 0, index + 1)[0] or \
                        reads.block(loop.orelse)[0]:
                    return False
    except _OutOfBudget:
        return False
    return reads.seen > 0
