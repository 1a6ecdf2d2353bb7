"""Holders: the variables, attributes, dict entries and closure cells of the user's that keep
tensors, named as the user would write them.

`find_holders(frames, matches)` searches breadth-first, with a budget of objects, from what the
user can name: the frames' variables (innermost frame first), then the globals of their modules
and the user's modules imported there. It follows attributes of the user's objects
(`self.model.fake_pool.images`), dict keys (`aggregators['train']['loss'].sum`), the first and
last items of lists, a model's submodules (named `Class.attr`, as in `Encoder.bank`; their
private attributes too where the class is the user's, as a `self._cache`), the hooks registered
on them, and the cells of closures (named by the free variable, as in the function that stores
into it). It keeps those holding a tensor that `matches`. Objects below `MAX_DEPTH` are searched
afterwards, down to `DEEP_DEPTH` with a budget of their own (`DEEP_BUDGET`): a holder behind a
manager, its list of extensions and a dict of summaries is found without changing what the
shallow search finds. Matching items under keys of a dict keyed by data (`cache[key] = out`, a
key that is not a string) are one holder, the dict: it is what grows, one key at a time.

Each holder also lists where a statement that stores into it may be written (`scopes`): the
frame's function under the name found, each user class met on the way under `self.<rest>`, the
function of a closure under its free variable, the module of a global. `statements.py` searches
them. `resolve(holder.locator)` finds the holder again later from the stack or the module,
without keeping a reference to the user's objects.
"""
from __future__ import annotations

import collections
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .frames import is_user_file

SCAN_ITEMS = 200  # variables, attributes or dict items looked at per object
BUDGET = 20_000  # objects one search may visit
MAX_DEPTH = 5  # steps below a variable
DEEP_DEPTH = 8  # steps below a variable searched after the rest, with DEEP_BUDGET objects
DEEP_BUDGET = 10_000
Step = tuple[str, Any]  # ("name" | "attr" | "key" | "cell", value)
# Where a statement may store into a holder, and the access path it uses there (steps from a
# name): ("code", code object, path): that function; ("class", type, path): its methods;
# ("file", filename, path): the file's top level; ("module", filename, path): the file, also in
# functions where the name is global; ("params", filename, path): the file's functions that take
# a parameter of the path's first name (the object handed down: `take_step(..., stats)`).
Scope = tuple[str, Any, tuple]
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
# What nn.Module keeps in every instance's __dict__ (parameters, buffers, submodules, hooks):
# searched otherwise, or torch's; the user's own private attributes are searched.
_MODULE_STATE = frozenset(vars(torch.nn.Module())) | {"_compiled_call_impl"}
_SELF_NAMES = ("self", "cls")  # every method has one: the class scopes cover them


@dataclass
class Holder:
    """A variable, container or attribute of the user's that holds tensors we look for."""

    name: str  # as the user writes it: total_loss, losses, self.history['logits'], Encoder.bank
    locator: tuple  # (code of the frame | module name, steps): for `resolve`
    frame: types.FrameType | None  # the frame whose variables the path starts from, if any
    value: Any  # the tensor or container itself
    tensors: list[torch.Tensor]  # the matching tensors it holds
    container: bool  # a list, dict or deque (True) or a tensor (False)
    scopes: list[Scope] = field(default_factory=list)


@dataclass
class _Node:
    name: str
    steps: tuple
    scopes: list[Scope]
    value: Any
    depth: int
    parent: "_Node | None" = None  # the dict this node is an item of


def find_holders(frames: list[types.FrameType], matches: Callable[[torch.Tensor], bool],
                 budget: int = BUDGET) -> list[Holder]:
    """Holders reachable from the frames and the user's modules that hold a tensor for which
    `matches` holds. Each object is reported once, under the shortest name found first."""
    seen: set[int] = set()
    found: list[tuple[Holder, _Node]] = []
    memo: dict[int, bool] = {}
    deep: list[tuple[Any, types.FrameType | None, _Node]] = []  # below MAX_DEPTH: searched last

    def test(t: torch.Tensor) -> bool:
        if id(t) not in memo:
            memo[id(t)] = bool(matches(t))
        return memo[id(t)]

    def search(queue: collections.deque, root: Any, frame: types.FrameType | None, spent: int, limit: int,
               shallow: bool) -> int:
        while queue and spent < limit:
            node = queue.popleft()
            if shallow and node.depth > MAX_DEPTH:
                if len(deep) < DEEP_BUDGET:
                    deep.append((root, frame, node))
                continue
            spent += 1
            holder = _visit(node, root, frame, seen, queue)
            if holder is not None:
                hits = [t for t in holder.tensors if test(t)]
                if hits:
                    holder.tensors = hits
                    found.append((holder, node))
        return spent

    spent = 0
    for root, frame, start in _roots(frames):
        spent = search(collections.deque(start), root, frame, spent, budget, True)
    # Deeper, once the shallow search is done (what it found comes first, unchanged), root by root.
    shallow_found, spent, i = len(found), 0, 0
    while i < len(deep) and spent < DEEP_BUDGET:
        root, frame, _ = deep[i]
        j = i
        while j < len(deep) and deep[j][0] is root and deep[j][1] is frame:
            j += 1
        spent = search(collections.deque(node for _, _, node in deep[i:j]), root, frame, spent, DEEP_BUDGET, False)
        i = j
    return _by_dict(found[:shallow_found]) + _by_dict(found[shallow_found:])


def _by_dict(found: list[tuple[Holder, _Node]]) -> list[Holder]:
    """Items of a dict keyed by data (a key that is not a string: `cache[(h, w)] = anchors`), or
    two items or more of a dict with many keys, become one holder: the dict, which grows a key at
    a time where each item stays as it was stored. Dicts of named fields (`history['logits']`)
    keep their items: those are what grows."""
    groups: dict[int, list[int]] = {}
    for i, (_, node) in enumerate(found):
        parent = node.parent
        if parent is not None and isinstance(parent.value, dict):
            groups.setdefault(id(parent.value), []).append(i)
    merged: dict[int, Holder] = {}  # index of the first item -> the dict's holder
    dropped: set[int] = set()
    for members in groups.values():
        holder, node = found[members[0]]
        parent = node.parent
        assert parent is not None
        keyed_by_data = any(not isinstance(key, str) for key in list(parent.value)[:SCAN_ITEMS])
        if not keyed_by_data and not (len(parent.value) > 8 and len(members) >= 2):
            continue
        tensors = [t for i in members for t in found[i][0].tensors]
        merged[members[0]] = Holder(parent.name, (holder.locator[0], parent.steps), holder.frame, parent.value,
                                    tensors, True, parent.scopes)
        dropped.update(members[1:])
    return [merged.get(i, holder) for i, (holder, _) in enumerate(found) if i not in dropped]


def _roots(frames: list[types.FrameType]) -> list[tuple[Any, types.FrameType | None, list[_Node]]]:
    """(locator root, frame, first nodes) for each frame's variables, then for the globals of
    the frames' modules (those not run as a frame: a step function's own module)."""
    roots: list[tuple[Any, types.FrameType | None, list[_Node]]] = []
    module_dicts: set[int] = set()
    for frame in frames:
        code = frame.f_code
        module_frame = frame.f_locals is frame.f_globals or code.co_name == "<module>"
        if module_frame:
            module_dicts.add(id(frame.f_globals))
        nodes = []
        for name, value in _items(frame.f_locals):
            pattern = (("name", name),)
            scopes: list[Scope] = [("module", code.co_filename, pattern)] if module_frame else [
                ("code", code, pattern), ("file", code.co_filename, pattern)]
            if name not in _SELF_NAMES:  # handed down to a helper under the same name, last
                scopes.append(("params", code.co_filename, pattern))
            nodes.append(_Node(name, (("name", name),), scopes, value, 0))
        roots.append((code, frame, nodes))
    for frame in frames:
        glob = frame.f_globals
        if id(glob) in module_dicts:
            continue
        module_dicts.add(id(glob))
        module, filename = glob.get("__name__"), glob.get("__file__") or frame.f_code.co_filename
        nodes = [_Node(name, (("name", name),), [("module", filename, (("name", name),))], value, 0)
                 for name, value in _items(glob)]
        roots.append((module, None, nodes))
    return roots


def _visit(node: _Node, root: Any, frame: types.FrameType | None, seen: set[int],
           queue: collections.deque) -> Holder | None:
    """A holder if `node` holds tensors; queues what lies below it."""
    value = node.value
    if id(value) in seen or isinstance(value, (type, str, bytes, int, float, bool)) or value is None:
        return None
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        if isinstance(value, torch.nn.Parameter):
            return None
        return Holder(node.name, (root, node.steps), frame, value, [value], False, node.scopes)
    if isinstance(value, (list, tuple, collections.deque)):
        tensors = _tensors_in(value)
        if tensors:
            return Holder(node.name, (root, node.steps), frame, value, tensors, True, node.scopes)
        n = len(value)
        for i in (range(n) if n <= 8 else (0, 1, 2, 3, n - 4, n - 3, n - 2, n - 1)) if node.depth < DEEP_DEPTH else ():
            _push(queue, node, f"[{i}]", ("key", i), value[i])
        return None
    if isinstance(value, dict):
        items = list(value.items())[:SCAN_ITEMS]
        if len(value) > 8 and any(isinstance(v, torch.Tensor) for _, v in items):
            # Many tensors under many keys: the dict itself is what grows (`cache[key] = out`).
            return Holder(node.name, (root, node.steps), frame, value, _tensors_in([v for _, v in items]), True,
                          node.scopes)
        for key, item in items if node.depth < DEEP_DEPTH else []:
            _push(queue, node, f"[{key!r}]", ("key", key), item, parent=node)
        return None
    if node.depth >= DEEP_DEPTH:
        return None
    if isinstance(value, torch.nn.Module):
        _push_module(queue, node, value)
    elif isinstance(value, types.ModuleType):
        filename = getattr(value, "__file__", None)
        if filename and is_user_file(filename):  # a module of the user's: its globals
            for attr, item in _items(vars(value)):
                _push(queue, node, f".{attr}", ("attr", attr), item,
                      extra=[("module", filename, ())])
    elif isinstance(value, types.FunctionType):
        _push_closure(queue, node, value)
    elif isinstance(value, types.MethodType):
        _push(queue, node, ".__self__", ("attr", "__self__"), value.__self__, rename=type(value.__self__).__name__)
    elif hasattr(value, "__dict__") and _users_class(type(value)):
        cls = type(value)
        for attr, item in _items(vars(value)):
            _push(queue, node, f".{attr}", ("attr", attr), item, extra=[("class", cls, (("name", "self"),))])
    return None


def _push(queue: collections.deque, node: _Node, suffix: str, step: Step, item: Any,
          extra: list[Scope] | None = None, rename: str | None = None, parent: _Node | None = None) -> None:
    """Queue `item`, reached from `node` by `step`; `extra` scopes start at this step (a
    module's global starts as a name there)."""
    scopes = [(kind, where, _extend(pattern, step)) for kind, where, pattern in (extra or []) + node.scopes]
    if rename is not None:  # a bound method: its object is named by its class
        name, scopes = rename, [("class", type(item), (("name", "self"),))]
    else:
        name = node.name + suffix
    queue.append(_Node(name, node.steps + (step,), scopes, item, node.depth + 1, parent))


def _extend(pattern: tuple, step: Step) -> tuple:
    return pattern + (step,) if pattern else (("name", step[1]),)


def _push_module(queue: collections.deque, node: _Node, module: torch.nn.Module) -> None:
    """Tensors and containers stored on a model's modules, named `Class.attr`, and the hooks
    registered on them (their closures and objects)."""
    for count, (sub_name, sub) in enumerate(module.named_modules()):
        if count >= 500:
            return
        cls = type(sub)
        steps = node.steps + tuple(("attr", part) for part in sub_name.split(".") if part)
        # Private attributes of the user's own classes too (`self._cache = {}`), not torch's.
        private = _users_class(cls)
        attrs = [(k, v) for k, v in _items(vars(sub))
                 if not k.startswith("_") or private and k not in _MODULE_STATE]
        attrs += [(k, v) for k, v in sub._buffers.items() if v is not None]
        for attr, item in attrs:
            scopes: list[Scope] = [("class", cls, (("name", "self"), ("attr", attr)))]
            queue.append(_Node(f"{cls.__name__}.{attr}", steps + (("attr", attr),), scopes, item, node.depth + 1))
        for hooks in _HOOKS:
            for key, hook in list(getattr(sub, hooks, {}).items())[:8]:
                queue.append(_Node(getattr(hook, "__name__", "hook"), steps + (("attr", hooks), ("key", key)), [],
                                   hook, node.depth + 1))


def _push_closure(queue: collections.deque, node: _Node, fn: types.FunctionType) -> None:
    """A closure's cells, named by their free variable: what the function writes."""
    if not fn.__closure__ or not is_user_file(fn.__code__.co_filename):
        return
    for i, (var, cell) in enumerate(zip(fn.__code__.co_freevars, fn.__closure__)):
        try:
            item = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        scopes: list[Scope] = [("code", fn.__code__, (("name", var),))]
        queue.append(_Node(var, node.steps + (("cell", i),), scopes, item, node.depth + 1))


def _users_class(cls: type) -> bool:
    module = cls.__module__ or ""
    return not module.startswith(("torch", "builtins", "collections", "numpy", "oomdoctor")) and not issubclass(
        cls, (type, types.ModuleType, types.FrameType))


def _items(mapping: Any) -> list[tuple[str, Any]]:
    try:
        items = list(mapping.items())
    except Exception:
        return []
    return [(k, v) for k, v in items[:SCAN_ITEMS * 5] if isinstance(k, str) and not k.startswith("__")]


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


def resolve(locator: tuple) -> Any:
    """What the locator's path leads to now, from a frame on the stack running its code or from
    its module's globals; None when neither is there or the path leads nowhere."""
    root, steps = locator
    if isinstance(root, str):
        module = sys.modules.get(root)
        if module is None:
            return None
        value: Any = vars(module)
    else:
        frame: types.FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_code is not root:
            frame = frame.f_back
        if frame is None:
            return None
        value = frame.f_locals
    try:
        for kind, key in steps:
            if kind == "attr":
                value = getattr(value, key)
            elif kind == "cell":
                value = value.__closure__[key].cell_contents
            else:
                value = value[key]
    except Exception:
        return None
    return value


def held_bytes(*values: Any) -> tuple[int, int]:
    """(bytes, tensors) tensors or containers hold together, each storage once."""
    storages = {id(t.untyped_storage()): t.untyped_storage().nbytes() for value in values for t in tensors_of(value)}
    return sum(storages.values()), len(storages)
