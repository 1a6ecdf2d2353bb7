"""Naming what holds memory, and finding the line of the user's code that put it there.

Expensive on purpose and therefore run only after a probe detected something (never per step):

- `user_frames()`: the user's frames on the stack (not torch, oomdoctor, the standard library or
  installed packages). Probes run inside hooks on the user's thread, so these are the frames of
  the loop that is running.
- `find_holders(frames, matches)`: every tensor, list, dict or attribute reachable in a few steps
  from those frames' variables, named as the user would write it (`total_loss`, `losses`,
  `self.history['logits']`, `Encoder.bank`), keeping those holding a tensor that `matches`.
- `walk_graph(tensors)`: a bounded walk of the autograd graphs behind tensors: the nodes, the
  bytes of the tensors saved for backward (parameters excluded) and the oomdoctor markers found.
- `attach_statement(holder)`: the statement that attaches a value to the holder (`+=`, `.append`,
  `x = x + ...`, `self.x = torch.cat([self.x, ...])`, `d[k] = ...`), found by an AST lookup in the
  frame's function, then in the holder's class, and the same statement fixed (`.item()`,
  `.detach()`), as a `Remedy`'s before/after.
"""
from __future__ import annotations

import ast
import collections
import linecache
import os
import sys
import sysconfig
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

_SKIP = (
    os.path.dirname(torch.__file__) + os.sep,
    os.path.dirname(os.path.abspath(sys.modules["oomdoctor"].__file__)) + os.sep,
    sysconfig.get_paths()["stdlib"] + os.sep,
)
_LIBRARIES = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
MARKER_KEY = "oomdoctor"  # the key of oomdoctor's marker in `grad_fn.metadata`
NODE_BUDGET = 200_000  # graph nodes one attribution may visit
SCAN_ITEMS = 200  # variables, attributes or dict items looked at per object
_ACCUMULATE = ("append", "extend", "insert", "appendleft", "add", "update", "setdefault")
_CONCAT = ("cat", "concat", "concatenate", "stack", "vstack", "hstack", "row_stack")


_USER_FILES: dict[str, bool] = {}


def is_user_file(filename: str) -> bool:
    known = _USER_FILES.get(filename)
    if known is None:
        known = _USER_FILES[filename] = not (filename.startswith(_SKIP) or filename.startswith("<frozen")
                                             or any(p in filename for p in _LIBRARIES))
    return known


def new_event(timeline: Any, kind: str, **data: Any) -> dict[str, Any]:
    """Add an event a probe keeps updating in place, and return it. The timeline keeps a bounded
    number of events; past it, the event is not recorded and updating it changes nothing."""
    before = len(timeline.events)
    timeline.add_event(kind, **data)
    return timeline.events[-1] if len(timeline.events) > before else {"kind": kind, **data}


def user_frames(limit: int = 8) -> list[types.FrameType]:
    """The user's frames on the current stack, innermost first."""
    frames = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and len(frames) < limit:
        if is_user_file(frame.f_code.co_filename):
            frames.append(frame)
        frame = frame.f_back
    return frames


def call_site() -> tuple[str, int, str] | None:
    """(file, line, function) of the innermost user frame: the line that called into torch."""
    frame: types.FrameType | None = sys._getframe(1)
    fallback = None
    while frame is not None:
        name = frame.f_code.co_filename
        if is_user_file(name):
            return name, frame.f_lineno, frame.f_code.co_name
        if fallback is None and not name.startswith(_SKIP) and not name.startswith("<frozen"):
            fallback = (name, frame.f_lineno, frame.f_code.co_name)  # an installed package's line
        frame = frame.f_back
    return fallback


def source_line(filename: str, line: int) -> str | None:
    text = linecache.getline(filename, line).strip()
    return text or None


# -- holders -----------------------------------------------------------------------------------
@dataclass
class Holder:
    """A variable, container or attribute of the user's that holds tensors we look for."""

    name: str  # as the user writes it: total_loss, losses, self.history['logits'], Encoder.bank
    path: str  # the same reached from the frame's variables (model.encoder.bank for Encoder.bank)
    steps: tuple  # the path as ("name" | "attr" | "key", value) steps, for `resolve`
    frame: types.FrameType
    value: Any  # the tensor or container itself
    tensors: list[torch.Tensor]  # the matching tensors it holds
    container: bool  # a list, dict or deque (True) or a tensor (False)
    owner: type | None = None  # class whose methods store into it as `owner_expr`
    owner_expr: str | None = None  # `self.bank`, `self.history['logits']`


def find_holders(frames: list[types.FrameType], matches: Callable[[torch.Tensor], bool]) -> list[Holder]:
    """Holders reachable from the frames' variables that hold a tensor for which `matches` holds.

    Each object is reported once, under the name found first (innermost frame first).
    """
    seen: set[int] = set()
    found: list[Holder] = []
    memo: dict[int, bool] = {}

    def test(t: torch.Tensor) -> bool:
        key = id(t)
        if key not in memo:
            memo[key] = bool(matches(t))
        return memo[key]

    for frame in frames:
        for name, value in _items(frame.f_locals):
            for cand in _expand(name, name, (("name", name),), value, frame, seen, depth=0):
                hits = [t for t in cand.tensors if test(t)]
                if hits:
                    cand.tensors = hits
                    found.append(cand)
    return found


def _items(mapping: Any) -> list[tuple[str, Any]]:
    try:
        items = list(mapping.items())
    except Exception:
        return []
    return [(k, v) for k, v in items[:SCAN_ITEMS * 5] if isinstance(k, str) and not k.startswith("__")]


def _expand(name: str, path: str, steps: tuple, value: Any, frame: types.FrameType, seen: set[int], depth: int,
            owner: type | None = None, owner_expr: str | None = None) -> Iterator[Holder]:
    if id(value) in seen or isinstance(value, (type, types.ModuleType, types.FunctionType, str, bytes)):
        return
    if isinstance(value, torch.Tensor):
        if not isinstance(value, torch.nn.Parameter):
            seen.add(id(value))
            yield Holder(name, path, steps, frame, value, [value], False, owner, owner_expr)
        return
    seen.add(id(value))
    if isinstance(value, (list, tuple, collections.deque)):
        tensors = _tensors_in(value)
        if tensors:
            yield Holder(name, path, steps, frame, value, tensors, True, owner, owner_expr)
    elif isinstance(value, dict):
        yield from _expand_dict(name, path, steps, value, frame, seen, depth, owner, owner_expr)
    elif isinstance(value, torch.nn.Module):
        if depth <= 1:  # a model in a local, or on the object in a local (self.model)
            yield from _expand_module(path, steps, value, frame, seen)
    elif depth == 0 and hasattr(value, "__dict__") and not type(value).__module__.startswith("torch"):
        for attr, item in _items(vars(value)):
            yield from _expand(f"{name}.{attr}", f"{path}.{attr}", steps + (("attr", attr),), item, frame, seen, 1,
                               type(value), f"self.{attr}")


def _expand_dict(name: str, path: str, steps: tuple, value: dict, frame: types.FrameType, seen: set[int],
                 depth: int, owner: type | None, owner_expr: str | None) -> Iterator[Holder]:
    items = list(value.items())[:SCAN_ITEMS]
    if len(value) > 8 and any(isinstance(v, torch.Tensor) for _, v in items):
        # Many tensors under many keys: the dict itself is what grows (`cache[key] = out`).
        yield Holder(name, path, steps, frame, value, _tensors_in([v for _, v in items]), True, owner, owner_expr)
        return
    if depth >= 2:
        return
    for key, item in items:
        sub = f"[{key!r}]"
        yield from _expand(name + sub, path + sub, steps + (("key", key),), item, frame, seen, depth + 1, owner,
                           owner_expr + sub if owner_expr else None)


def _expand_module(path: str, steps: tuple, module: torch.nn.Module, frame: types.FrameType,
                   seen: set[int]) -> Iterator[Holder]:
    """Tensors and containers stored on a model's modules, named `Class.attr`."""
    for count, (sub_name, sub) in enumerate(module.named_modules()):
        if count >= 500:
            return
        cls = type(sub)
        sub_path = f"{path}.{sub_name}" if sub_name else path
        sub_steps = steps + tuple(("attr", part) for part in sub_name.split(".") if part)
        attrs = [(k, v) for k, v in _items(vars(sub)) if not k.startswith("_")]
        attrs += [(k, v) for k, v in sub._buffers.items() if v is not None]
        for attr, item in attrs:
            yield from _expand(f"{cls.__name__}.{attr}", f"{sub_path}.{attr}", sub_steps + (("attr", attr),), item,
                               frame, seen, 2, cls, f"self.{attr}")


def _tensors_in(items: Any) -> list[torch.Tensor]:
    """Tensors among a container's first and last items (and one level inside tuples there)."""
    seq = list(items) if not isinstance(items, list) else items
    picked = seq if len(seq) <= 16 else seq[:8] + seq[-8:]
    out = []
    for item in picked:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, (tuple, list)):
            out.extend(t for t in item[:8] if isinstance(t, torch.Tensor))
        elif isinstance(item, dict):
            out.extend(t for t in list(item.values())[:8] if isinstance(t, torch.Tensor))
    return out


def all_tensors(holder: Holder) -> list[torch.Tensor]:
    """Every tensor the holder holds now, for sizing (the match used only a sample)."""
    return tensors_of(holder.value) or holder.tensors


def tensors_of(value: Any) -> list[torch.Tensor]:
    """The tensors in a tensor, list, tuple, deque or dict (and one level inside its items)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, collections.deque)):
        out: list[torch.Tensor] = []
        for item in value:
            if isinstance(item, torch.Tensor):
                out.append(item)
            elif isinstance(item, (tuple, list)):
                out.extend(t for t in item if isinstance(t, torch.Tensor))
            elif isinstance(item, dict):
                out.extend(t for t in item.values() if isinstance(t, torch.Tensor))
        return out
    return []


def resolve(code: types.CodeType, steps: tuple) -> Any:
    """What `steps` leads to now, from the variables of a frame on the stack running `code`;
    None when no such frame is running or the path no longer leads anywhere."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    if frame is None:
        return None
    value: Any = frame.f_locals
    try:
        for kind, key in steps:
            value = getattr(value, key) if kind == "attr" else value[key]
    except Exception:
        return None
    return value


def held_bytes(value: Any) -> tuple[int, int]:
    """(bytes, tensors) a tensor or container holds, each storage once."""
    storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors_of(value)}
    return sum(storages.values()), len(storages)


# -- graphs ------------------------------------------------------------------------------------
@dataclass
class GraphStats:
    nodes: int = 0
    saved_bytes: int = 0  # tensors saved for backward, parameters excluded, each storage once
    markers: list[Any] = field(default_factory=list)  # oomdoctor markers found, each once
    truncated: bool = False


_SAVED_NAMES: dict[type, tuple[str, ...]] = {}


def walk_graph(roots: list[Any], budget: int = NODE_BUDGET, want_bytes: bool = True,
               stop: Callable[[Any], bool] | None = None) -> GraphStats:
    """Walk the autograd graph from `roots` (tensors or nodes), visiting at most `budget` nodes.

    `stop(marker)` ends the walk early once it returns True.
    """
    stats = GraphStats()
    nodes: list[Any] = []  # keeps the visited nodes alive, so their ids stay unique
    seen: set[int] = set()
    storages: dict[int, int] = {}
    params: set[int] = set()
    marker_ids: set[int] = set()
    stack = [r.grad_fn if isinstance(r, torch.Tensor) else r for r in roots]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        if len(nodes) >= budget:
            stats.truncated = True
            break
        seen.add(id(node))
        nodes.append(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf (a parameter)
        if isinstance(variable, torch.Tensor):
            params.add(_storage_id(variable))
        try:
            marker = node.metadata.get(MARKER_KEY)
        except Exception:
            marker = None
        if marker is not None and id(marker) not in marker_ids:
            marker_ids.add(id(marker))
            stats.markers.append(marker)
            if stop is not None and stop(marker):
                break
        if want_bytes:
            for t in _saved_tensors(node):
                storages.setdefault(_storage_id(t), _storage_bytes(t))
        stack.extend(nxt for nxt, _ in getattr(node, "next_functions", ()))
    stats.nodes = len(nodes)
    stats.saved_bytes = sum(n for key, n in storages.items() if key not in params)
    return stats


def _saved_tensors(node: Any) -> Iterator[torch.Tensor]:
    cls = type(node)
    names = _SAVED_NAMES.get(cls)
    if names is None:
        names = tuple(a for a in dir(node) if a.startswith("_saved_") and not a.endswith(("_sym_sizes", "_sym_strides")))
        _SAVED_NAMES[cls] = names
    for name in names:
        try:
            value = getattr(node, name)
        except Exception:  # freed by backward(), or not readable
            continue
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, torch.Tensor))


def _storage_id(t: torch.Tensor) -> int:
    try:
        return id(t.untyped_storage())
    except Exception:
        return id(t)


def _storage_bytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except Exception:
        return 0


# -- the line that attaches --------------------------------------------------------------------
@dataclass
class Attach:
    """The statement that stores into a holder, and the same statement fixed."""

    file: str
    line: int
    function: str
    code: str  # the statement as written (its first line when it spans several)
    before: str
    after: str
    method: str  # .item() | .detach()
    accumulating: bool  # adds to what the holder had (+=, append, x = x + ...), not a plain store


def attach_statement(holder: Holder, method: str) -> Attach | None:
    """Find where `holder` gets its values: in the frame's function, in the owner's class, in the
    frame's file; an accumulating statement (`+=`, `.append`) in a loop wins over a plain store.

    `method` fixes what is attached (`.item()`, `.detach()`, `.cpu()`); `.item()` becomes
    `.detach()` where a tensor is concatenated or stored whole rather than added up.
    """
    code = holder.frame.f_code
    scopes: list[tuple[str, ast.AST, str]] = []
    scope = _function_scope(code.co_filename, code.co_firstlineno, code.co_name)
    if scope is not None:
        scopes.append((code.co_filename, scope, holder.path))
    if holder.owner is not None and holder.owner_expr is not None:
        scopes += [(filename, method, holder.owner_expr) for filename, methods in _class_scopes(holder.owner)
                   for method in methods]
    tree = _parse(code.co_filename)
    if tree is not None and scope is not tree:
        scopes.append((code.co_filename, tree, holder.path))
    best: tuple[int, Attach] | None = None
    for filename, node, expr in scopes:
        found = _search(node, expr, filename, method)
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    return best[1] if best is not None else None


def _parse(filename: str) -> ast.Module | None:
    source = "".join(linecache.getlines(filename))
    if not source:
        return None
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


def _search(scope: ast.AST, expr: str, filename: str, method: str) -> tuple[int, Attach] | None:
    """The best statement in `scope` attaching to `expr`: accumulating ones in a loop first."""
    best: tuple[int, int, ast.stmt, list[ast.expr], str, bool] | None = None
    for stmt, in_loop in _statements(scope):
        parts = _attached_parts(stmt, expr)
        if parts is None:
            continue
        wrapped, accumulating = parts
        rank = (0 if accumulating else 2) + (0 if in_loop else 1)
        if best is None or rank < best[0]:
            fix = ".detach()" if method == ".item()" and (not accumulating or _is_concat(stmt)) else method
            best = (rank, stmt.lineno, stmt, wrapped, fix, accumulating)
    if best is None:
        return None
    _, line, stmt, wrapped, method, accumulating = best
    before = _segment(filename, stmt)
    if before is None:
        return None
    after = _rewrite(filename, stmt, before, wrapped, method)
    function = scope.name if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) else "<module>"
    return best[0], Attach(filename, line, function, before.splitlines()[0].strip(), before, after, method,
                           accumulating)


def _statements(scope: ast.AST, in_loop: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Statements of a scope, not descending into nested functions or classes."""
    for child in ast.iter_child_nodes(scope):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(child, ast.stmt):
            yield child, in_loop
        yield from _statements(child, in_loop or isinstance(child, (ast.For, ast.While, ast.AsyncFor)))


def _attached_parts(stmt: ast.stmt, expr: str) -> tuple[list[ast.expr], bool] | None:
    """If `stmt` attaches values to `expr`: (the sub-expressions that bring them, accumulating)."""
    if isinstance(stmt, ast.AugAssign) and _same(stmt.target, expr):
        return _elements(stmt.value), True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        call = stmt.value
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in _ACCUMULATE and _same(func.value, expr) and call.args:
            arg = call.args[-1] if func.attr == "insert" else call.args[0]
            return _elements(arg) if func.attr in ("extend", "update") else [arg], True
        if isinstance(func, ast.Attribute) and func.attr == "append" and isinstance(func.value, ast.Call):
            inner = func.value.func  # d.setdefault(k, []).append(v)
            if isinstance(inner, ast.Attribute) and inner.attr == "setdefault" and _same(inner.value, expr):
                return [call.args[0]] if call.args else [], True
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        for target in targets:
            if isinstance(target, ast.Subscript) and _same(target.value, expr):
                return [stmt.value], True
            if _targets(target, expr):
                if _mentions(stmt.value, expr):
                    return _fresh_parts(stmt.value, expr), True
                return [stmt.value], False
    return None


def _targets(target: ast.expr, expr: str) -> bool:
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(_targets(t, expr) for t in target.elts)
    return _same(target, expr)


def _same(node: ast.expr, expr: str) -> bool:
    return ast.unparse(node) == expr


def _mentions(node: ast.AST, expr: str) -> bool:
    return any(isinstance(n, ast.expr) and _same(n, expr) for n in ast.walk(node))


def _elements(node: ast.expr) -> list[ast.expr]:
    return list(node.elts) if isinstance(node, (ast.List, ast.Tuple)) else [node]


def _fresh_parts(node: ast.expr, expr: str) -> list[ast.expr]:
    """In `x = x + a`, `x = torch.cat([x, a])`, `h = rnn(i, h)`: what brings the graph in."""
    if not _mentions(node, expr):
        return [node]
    if _same(node, expr):
        return []
    if isinstance(node, ast.BinOp):
        return _fresh_parts(node.left, expr) + _fresh_parts(node.right, expr)
    if isinstance(node, ast.Call):
        if _is_concat_call(node):
            return [p for arg in node.args for elt in _elements(arg) for p in _fresh_parts(elt, expr)]
        # A call fed its own output (a recurrent state): cut the history at the input.
        return [n for n in ast.walk(node) if isinstance(n, ast.expr) and _same(n, expr)][:1]
    return [node]


def _is_concat_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr in _CONCAT)
        or (isinstance(node.func, ast.Name) and node.func.id in _CONCAT))


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
