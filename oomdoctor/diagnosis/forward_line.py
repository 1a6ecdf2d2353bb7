"""The user's own forward line, and that line rewritten with autocast or activation checkpointing.

Pure: a post-mortem hands in the line where activations were made (the failed frames of a
forward-phase OOM, or the recorded site of the largest activations) and gets back the code a
remedy shows as "before" and "after". A line that is not a whole statement on its own (part of a
multi-line call) or that calls nothing gives None: the remedy then says what to do in words
rather than showing code that would not run.
"""
from __future__ import annotations

import ast
import linecache
from dataclasses import dataclass

SEGMENTS = 2  # checkpoint_sequential's segments: keeps about 1/SEGMENTS of the activations


@dataclass(frozen=True)
class ForwardLine:
    """A line of the user's that runs a forward: the model's call (`out = model(x)`) or, inside
    a module's own `forward`, one block's call (`x = self.block(x)`)."""

    file: str
    line: int
    function: str
    code: str

    @property
    def in_module(self) -> bool:
        """Inside a module's forward: the call is one block of the model, not the whole model."""
        return self.function == "forward"


def at(file: str, line: int, function: str, code: str | None = None) -> ForwardLine | None:
    """The line at file:line (its text read from the file when not given), if it is a statement
    that calls something."""
    text = (code or linecache.getline(file, line)).strip()
    if not text or _module_call(text) is None:
        return None
    return ForwardLine(file, line, function, text)


def autocast(forward: ForwardLine, device_type: str) -> str:
    """The line run under bf16 autocast."""
    return (f"with torch.autocast(device_type={device_type!r}, dtype=torch.bfloat16):\n"
            f"    {forward.code}")


def checkpoint(forward: ForwardLine) -> str | None:
    """The line with its module call checkpointed: one block (inside a forward) is recomputed in
    backward; a whole model called from the loop is split into segments, of which only the
    boundaries are kept (checkpointing the whole model in one piece would recompute everything
    at once and lower nothing). None for a whole model called with several inputs, which
    `checkpoint_sequential` cannot split."""
    call = _module_call(forward.code)
    assert call is not None  # `at` only makes lines that have one
    callee = ast.unparse(call.func)
    args = ", ".join(ast.unparse(a) for a in call.args)
    if forward.in_module:
        function, new = "checkpoint", f"checkpoint({callee}, {args}, use_reentrant=False)"
    elif len(call.args) == 1:
        function = "checkpoint_sequential"
        new = f"checkpoint_sequential({callee}, {SEGMENTS}, {args}, use_reentrant=False)"
    else:
        return None
    line = forward.code
    return (f"from torch.utils.checkpoint import {function}\n"
            + line[:call.col_offset] + new + line[call.end_col_offset:])


def _module_call(code: str) -> ast.Call | None:
    """The call in a one-line statement that runs a module: `model(x)`, `self.block(x)` (a name
    or an attribute of a name, called with positional arguments only), innermost first, so that
    `model(x).logsumexp(-1).mean()` gives `model(x)`."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    calls = [n for n in ast.walk(tree.body[0]) if isinstance(n, ast.Call) and n.args
             and not n.keywords and not any(isinstance(a, ast.Starred) for a in n.args)
             and (isinstance(n.func, ast.Name)
                  or isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
                  and n.func.value.id == "self")]
    # ast.walk is breadth-first: the last one found is the innermost.
    return calls[-1] if calls else None
