"""The statement of the user's code that stores into a holder, and the same statement fixed.

`attach_statement(holder, method)` searches the holder's scopes (holders.py): its frame's
function, the methods of the user's classes met on the way to it (a helper such as
`self._log(z)` that appends is one of them), a closure's function, the module of a global, also
inside the functions that use the global. Statements match by structure, not text: the same name,
the same attribute chain, and a subscript with any key where the holder went through a dict
(`total_loss[loss_name] += value` stores into `total_loss['Loss/BoxLoss']`); a constant key must
be the holder's. Accumulating statements (`+=`, `.append`, `x = x + ...`,
`x = torch.cat([x, ...])`, `d[k] = ...`, an in-place `x.add_(loss)`) in a loop win over plain
stores (`x = ...`, `x.copy_(y)`); a store of an empty or constant value (`losses = []`) never
attaches a graph and is never the answer. A holder is also reached through an accessor of its
class, a method that returns it (`stats.device_stat('average_loss').add_(loss)` with
`def device_stat(self, name): return self.device_stats[name]`). The fix attaches `.item()`,
`.detach()` or `.cpu()` to what brings the tensor in, keeping the user's formatting.
"""
from __future__ import annotations

import ast
import functools
import linecache
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from .holders import Holder

_ACCUMULATE = ("append", "extend", "insert", "appendleft", "add", "update", "setdefault")
# In-place tensor methods that bring their arguments' graphs into the tensor: on top of what it
# had (accumulating), or in place of it.
_INPLACE_ACCUMULATE = ("add_", "sub_", "mul_", "div_", "true_divide_", "addcmul_", "addcdiv_", "lerp_",
                       "addmm_", "addmv_", "addbmm_", "baddbmm_", "addr_")
_INPLACE_STORE = ("copy_", "set_")
_CONCAT = ("cat", "concat", "concatenate", "stack", "vstack", "hstack", "row_stack")
_BUILTIN_TYPES = ("list", "dict", "set", "tuple", "float", "int")
_LIBRARIES = ("torch", "np", "numpy", "collections", "math")
_ANY = object()  # a subscript whose key is not a constant: matches any key


@dataclass
class Attach:
    """The statement that stores into a holder, and the same statement fixed."""

    file: str
    line: int
    function: str
    code: str  # the statement as written (its first line when it spans several)
    before: str | None  # None where no one-word fix applies (a dict built around the tensor)
    after: str | None
    method: str  # .item() | .detach() | .cpu()
    accumulating: bool  # adds to what the holder had (+=, append, x = x + ...), not a plain store


def attach_statement(holder: Holder, method: str) -> Attach | None:
    """The best statement storing into `holder` over its scopes (the first scope wins a tie).

    `method` fixes what is attached; `.item()` becomes `.detach()` where a tensor is
    concatenated or stored whole rather than added up.
    """
    best: tuple[int, Attach] | None = None
    accessors = _accessors(holder)
    for filename, node, path, descend in _scopes(holder):
        for variant in [path, *_through_accessors(path, accessors)]:
            found = _search(node, variant, filename, method, descend)
            if found is not None and (best is None or found[0] < best[0]):
                best = found
    return best[1] if best is not None else None


def _scopes(holder: Holder) -> Iterator[tuple[str, ast.AST, tuple, bool]]:
    for kind, where, path in holder.scopes:
        if kind == "code":
            scope = _function_scope(where.co_filename, where.co_firstlineno, where.co_name)
            if scope is not None:
                yield where.co_filename, scope, path, False
        elif kind == "class":
            for filename, methods in _class_scopes(where):
                for method in methods:
                    yield filename, method, path, False
        elif kind == "params":
            tree = _parse(where)
            for function in ast.walk(tree) if tree is not None else ():
                if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and path[0][1] in _params(function):
                    yield where, function, path, False
        else:
            tree = _parse(where)
            if tree is not None:
                yield where, tree, path, kind == "module"


def _params(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = function.args
    return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg] if a]


# An accessor: (the steps below `self` it returns, the index of the parameter that is its key or
# None): `def device_stat(self, name): return self.device_stats[name]` -> ((attr, device_stats),
# (key, _ANY)), 0.
Accessor = tuple[tuple, "int | None"]


def _accessors(holder: Holder) -> list[tuple[int, dict[str, Accessor]]]:
    """The accessor methods of the user's classes met on the way to the holder, each with how
    many steps below an object of the class the holder lies."""
    found: list[tuple[int, dict[str, Accessor]]] = []
    for kind, cls, pattern in holder.scopes:
        if kind != "class":
            continue
        methods: dict[str, Accessor] = {}
        for _, functions in _class_scopes(cls):
            for function in functions:
                accessor = _accessor(function)
                if accessor is not None:
                    methods.setdefault(function.name, accessor)
        if methods:
            found.append((len(pattern) - 1, methods))
    return found


def _accessor(function: ast.AST) -> Accessor | None:
    """What a method returns of `self`, if its body (asserts and a docstring aside) is just
    `return self.<attrs and keys>`."""
    body = [stmt for stmt in function.body if not isinstance(stmt, ast.Assert)
            and not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        return None
    params = _params(function)[1:]  # without self
    steps: list[tuple[str, Any]] = []
    key_param = None
    node = body[0].value
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        if isinstance(node, ast.Attribute):
            steps.append(("attr", node.attr))
        else:
            key = node.slice
            if isinstance(key, ast.Constant):
                steps.append(("key", key.value))
            else:
                if isinstance(key, ast.Name) and key.id in params and key_param is None:
                    key_param = params.index(key.id)
                steps.append(("key", _ANY))
        node = node.value
    if not (isinstance(node, ast.Name) and node.id == "self") or not steps:
        return None
    return tuple(steps[::-1]), key_param


def _through_accessors(path: tuple, accessors: list[tuple[int, dict[str, Accessor]]]) -> list[tuple]:
    """`path` with the steps an accessor returns replaced by a call to it: the holder
    `stats.device_stats['average_loss']` is also `stats.device_stat('average_loss')`."""
    variants = []
    for depth, methods in accessors:
        start = len(path) - depth  # where the path reaches the object of the accessor's class
        if start < 1:
            continue
        for name, (steps, key_param) in methods.items():
            below = path[start:start + len(steps)]
            if len(below) < len(steps) or not all(kind == want_kind and (want is _ANY or value == want)
                                                  for (kind, value), (want_kind, want) in zip(below, steps)):
                continue
            # The argument that is the accessor's key: the holder's key at that step.
            keys = [value for (_, want), (_, value) in zip(steps, below) if want is _ANY]
            argument = keys[0] if key_param is not None and keys else _ANY
            variants.append(path[:start] + (("call", (name, key_param, argument)),) + path[start + len(steps):])
    return variants


def _parse(filename: str) -> ast.Module | None:
    source = "".join(linecache.getlines(filename))
    return _parse_source(source) if source else None


@functools.lru_cache(maxsize=16)
def _parse_source(source: str) -> ast.Module | None:
    # One parse per file and attribution: every holder's scopes (its function, the file, the
    # functions that take it, its classes and their accessors) read the same few files.
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _function_scope(filename: str, firstline: int, name: str) -> ast.AST | None:
    tree = _parse(filename)
    if tree is None or name == "<module>":
        return tree
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if first == firstline:
                return node
    return None


def _class_scopes(cls: type) -> Iterator[tuple[str, list[ast.AST]]]:
    for klass in cls.__mro__:
        if klass.__module__.startswith(("torch", "builtins")):
            continue
        module = sys.modules.get(klass.__module__)
        filename = getattr(module, "__file__", None)
        tree = _parse(filename) if filename else None
        if tree is None:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name == klass.__name__:
                yield filename, [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _search(scope: ast.AST, path: tuple, filename: str, method: str, descend: bool) -> tuple[int, Attach] | None:
    """The best statement in `scope` attaching to `path`: accumulating ones in a loop first."""
    best: tuple[int, int, ast.stmt, list[ast.expr], str, bool] | None = None
    for stmt, in_loop in _statements(scope, path[0][1] if descend else None):
        parts = _attached_parts(stmt, path)
        if parts is None:
            continue
        wrapped, accumulating = parts
        rank = (0 if accumulating else 2) + (0 if in_loop else 1)
        if best is None or rank < best[0]:
            # A tensor updated in place keeps a tensor: `add_(loss.detach())`, as `.item()` syncs.
            fix = ".detach()" if method == ".item()" and (not accumulating or _is_concat(stmt) or _is_inplace(stmt)) \
                else method
            best = (rank, stmt.lineno, stmt, wrapped, fix, accumulating)
    if best is None:
        return None
    rank, line, stmt, wrapped, method, accumulating = best
    before = _segment(filename, stmt)
    if before is None:
        return None
    after = _rewrite(filename, stmt, before, wrapped, method)
    return rank, Attach(filename, line, _function_of(scope, stmt), before.splitlines()[0].strip(), before, after,
                        method, accumulating)


def _statements(scope: ast.AST, global_name: str | None = None, in_loop: bool = False,
                ) -> Iterator[tuple[ast.stmt, bool]]:
    """Statements of a scope; inside nested functions too where `global_name` is global there
    (a step function appending to a module's list), never inside classes."""
    for child in ast.iter_child_nodes(scope):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if global_name is None or _binds(child, global_name):
                continue
            # A function called from a loop: its statements run once per iteration.
            yield from _statements(child, global_name, True)
            continue
        if isinstance(child, ast.ClassDef):
            continue
        if isinstance(child, ast.stmt):
            yield child, in_loop
        yield from _statements(child, global_name, in_loop or isinstance(child, (ast.For, ast.While, ast.AsyncFor)))


def _binds(function: ast.AST, name: str) -> bool:
    """`name` is local in `function` (a parameter, or assigned without `global`)."""
    args = function.args
    if name in {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg] if a}:
        return True
    declared = any(isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names for n in ast.walk(function))
    return not declared and any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)
                                for n in ast.walk(function))


def _function_of(scope: ast.AST, stmt: ast.stmt) -> str:
    name = scope.name if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else "<module>"
    for node in ast.walk(scope):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node is not scope and \
                node.lineno <= stmt.lineno <= (node.end_lineno or node.lineno):
            name = node.name
    return name


def _attached_parts(stmt: ast.stmt, path: tuple) -> tuple[list[ast.expr], bool] | None:
    """If `stmt` attaches values to `path`: (the sub-expressions that bring them, accumulating)."""
    if isinstance(stmt, ast.AugAssign) and _same(stmt.target, path):
        return _elements(stmt.value), True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        call = stmt.value
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in _ACCUMULATE and _same(func.value, path) and call.args:
            arg = call.args[-1] if func.attr == "insert" else call.args[0]
            return _elements(arg) if func.attr in ("extend", "update") else [arg], True
        if isinstance(func, ast.Attribute) and func.attr in _INPLACE_ACCUMULATE + _INPLACE_STORE \
                and _same(func.value, path):
            # `x.add_(loss)`: the tensor `x` now carries `loss`'s graph; `x.mul_(0.9)` brings none.
            parts = [arg for arg in call.args if not _blank(arg)]
            return (parts, func.attr in _INPLACE_ACCUMULATE) if parts else None
        if isinstance(func, ast.Attribute) and func.attr == "append" and isinstance(func.value, ast.Call):
            inner = func.value.func  # d.setdefault(k, []).append(v)
            if isinstance(inner, ast.Attribute) and inner.attr == "setdefault" and _same(inner.value, path):
                return [call.args[0]] if call.args else [], True
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for target in targets:
            if isinstance(target, ast.Subscript) and _same(target.value, path) and not _blank(stmt.value):
                return [stmt.value], True
            if _targets(target, path):
                if _mentions(stmt.value, path):
                    return _fresh_parts(stmt.value, path), True
                return None if _blank(stmt.value) else ([stmt.value], False)
    return None


def _blank(node: ast.expr) -> bool:
    """A value that carries no graph: a constant, an empty container, `torch.zeros(0, 8)`."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return all(_blank(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(_blank(v) for v in node.values)
    if isinstance(node, ast.UnaryOp):
        return _blank(node.operand)
    if isinstance(node, ast.Name):
        return node.id in _BUILTIN_TYPES  # defaultdict(list)
    if isinstance(node, ast.Call):
        root = node.func
        while isinstance(root, ast.Attribute):
            root = root.value
        # A constructor (`list()`, `deque(maxlen=8)`, `torch.zeros(0, 8)`), not `out.clone()`.
        constructor = isinstance(node.func, ast.Name) or isinstance(root, ast.Name) and root.id in _LIBRARIES
        return constructor and all(_blank(a) for a in node.args) and all(_blank(k.value) for k in node.keywords)
    return False


def _targets(target: ast.expr, path: tuple) -> bool:
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(_targets(t, path) for t in target.elts)
    return _same(target, path)


def _chain(node: ast.expr) -> list[tuple[str, Any]] | None:
    """`a.b[k].c` as [("name", "a"), ("attr", "b"), ("key", k | _ANY), ("attr", "c")]."""
    steps: list[tuple[str, Any]] = []
    while True:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if _inplace(node.func.attr):  # `x.mul_(0.9)` is `x`
                node = node.func.value
                continue
            steps.append(("call", (node.func.attr, node.args, node.keywords)))
            node = node.func.value
        elif isinstance(node, ast.Attribute):
            steps.append(("attr", node.attr))
            node = node.value
        elif isinstance(node, ast.Subscript):
            key = node.slice
            steps.append(("key", key.value if isinstance(key, ast.Constant) else _ANY))
            node = node.value
        elif isinstance(node, ast.Name):
            steps.append(("name", node.id))
            return steps[::-1]
        else:
            return None


def _same(node: ast.expr, path: tuple) -> bool:
    chain = _chain(node)
    if chain is None or len(chain) != len(path):
        return False
    return all(kind == want_kind and (_called(value, want) if kind == "call" else value is _ANY or value == want)
               for (kind, value), (want_kind, want) in zip(chain, path))


def _called(call: tuple, want: tuple) -> bool:
    """A call `(name, args, keywords)` of an accessor `(name, key parameter, key)`: the same
    method, and the argument passed as its key is the holder's key where it is a constant."""
    name, args, _ = call
    want_name, key_param, key = want
    if name != want_name:
        return False
    if key_param is None or key is _ANY or key_param >= len(args):
        return True
    argument = args[key_param]
    return not isinstance(argument, ast.Constant) or argument.value == key


def _inplace(name: str) -> bool:
    """A tensor method that works in place and returns the tensor (`add_`, `mul_`, `zero_`)."""
    return name.endswith("_") and not name.startswith("_")


def _mentions(node: ast.AST, path: tuple) -> bool:
    return any(isinstance(n, ast.expr) and _same(n, path) for n in ast.walk(node))


def _elements(node: ast.expr) -> list[ast.expr]:
    return list(node.elts) if isinstance(node, (ast.List, ast.Tuple)) else [node]


def _fresh_parts(node: ast.expr, path: tuple) -> list[ast.expr]:
    """In `x = x + a`, `x = torch.cat([x, a])`, `h = rnn(i, h)`: what brings the graph in."""
    if not _mentions(node, path):
        return [node]
    if _same(node, path):
        return []
    if isinstance(node, ast.BinOp):
        return _fresh_parts(node.left, path) + _fresh_parts(node.right, path)
    if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.DictComp, ast.SetComp)):
        return []  # rebuilt from itself element by element: no one-word fix
    if isinstance(node, ast.Call):
        if _is_concat_call(node):
            return [p for arg in node.args for elt in _elements(arg) for p in _fresh_parts(elt, path)]
        # A call fed its own output (a recurrent state): cut the history at the input.
        return [n for n in ast.walk(node) if isinstance(n, ast.expr) and _same(n, path)][:1]
    return [node]


def _is_concat_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr in _CONCAT)
        or (isinstance(node.func, ast.Name) and node.func.id in _CONCAT))


def _is_inplace(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and \
        isinstance(stmt.value.func, ast.Attribute) and stmt.value.func.attr in _INPLACE_ACCUMULATE + _INPLACE_STORE


def _is_concat(stmt: ast.stmt) -> bool:
    return any(_is_concat_call(n) for n in ast.walk(stmt))


def _segment(filename: str, stmt: ast.stmt) -> str | None:
    lines = linecache.getlines(filename)[stmt.lineno - 1:stmt.end_lineno]
    if not lines:
        return None
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "".join(line[indent:] if line[:indent].isspace() else line.lstrip() for line in lines).rstrip()


def _rewrite(filename: str, stmt: ast.stmt, before: str, parts: list[ast.expr], method: str) -> str:
    """`before` with each part fixed, keeping the user's formatting."""
    lines = linecache.getlines(filename)[stmt.lineno - 1:stmt.end_lineno]
    indent = len(lines[0]) - len(lines[0].lstrip())
    text = "".join(lines)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(lineno: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets
        row = lines[lineno - stmt.lineno]
        return starts[lineno - stmt.lineno] + len(row.encode()[:col].decode(errors="ignore"))

    spans = sorted(((offset(p.lineno, p.col_offset), offset(p.end_lineno, p.end_col_offset), p) for p in parts),
                   key=lambda s: s[0], reverse=True)
    for start, end, part in spans:
        piece = text[start:end]
        simple = isinstance(part, (ast.Name, ast.Attribute, ast.Call, ast.Subscript))
        text = text[:start] + (piece if simple else f"({piece})") + method + text[end:]
    fixed = [line[indent:] if line[:indent].isspace() else line.lstrip() for line in text.splitlines(True)]
    return "".join(fixed).rstrip() if parts else before
