"""The words lint recognises and small helpers over Python's AST, shared by every part of lint.

Contract: pure functions of AST nodes and strings; no state. The vocabulary lists (method names that
detach, torch factories, callee names that look like a model or a loss) are the only place where
lint's guesses about names live.
"""
from __future__ import annotations

import ast
import re

# Method calls and attributes whose result carries no graph (numbers, integer/bool tensors, metadata).
DETACHING = frozenset({
    "item", "tolist", "numpy", "detach", "detach_", "argmax", "argmin", "argsort", "eq", "ne", "lt", "le",
    "gt", "ge", "long", "int", "bool", "size", "dim", "numel", "nelement", "isnan", "isinf", "isfinite",
    "nonzero", "count_nonzero", "backward", "stride", "is_contiguous", "data_ptr", "element_size"})
PLAIN_ATTRS = frozenset({"data", "grad", "shape", "dtype", "device", "requires_grad", "is_leaf", "ndim",
                         "grad_fn", "is_cuda", "layout"})
NUMBER_BUILTINS = frozenset({"float", "int", "bool", "str", "len", "repr", "format", "print", "isinstance",
                             "type", "id", "hash", "round"})
CONTAINER_BUILTINS = frozenset({"list", "tuple", "sorted", "reversed", "iter", "next", "zip", "enumerate",
                                "dict", "set"})  # same objects, regrouped: graph or not
COMPUTE_BUILTINS = frozenset({"sum", "max", "min", "abs", "pow"})
CONTAINER_METHODS = frozenset({"get", "setdefault", "pop", "values", "items", "copy", "popleft"})
TORCH_ROOTS = frozenset({"torch", "F", "th", "functional"})
TORCH_FACTORIES = frozenset({"tensor", "zeros", "ones", "empty", "full", "randn", "rand", "randint", "arange",
                             "linspace", "eye", "zeros_like", "ones_like", "empty_like", "full_like",
                             "randn_like", "rand_like", "randint_like", "randperm", "from_numpy"})
APPENDS = frozenset({"append", "extend", "insert", "appendleft"})
SHRINKS = frozenset({"pop", "popleft", "clear", "remove"})
KEEP_CHAIN = frozenset({"detach", "clone", "to", "contiguous", "float", "half", "double", "bfloat16", "cuda"})
REDUCTIONS = frozenset({"mean", "sum", "norm", "max", "min", "prod", "std", "var"})
MODULE_MARKERS = frozenset({"eval", "train", "parameters", "named_parameters", "modules", "children",
                            "requires_grad_"})
MODULE_WRAPPERS = frozenset({"compile", "DataParallel", "DistributedDataParallel", "DDP", "FSDP",
                             "FullyShardedDataParallel", "deepcopy", "AveragedModel"})
MODULE_MOVES = frozenset({"to", "cuda", "cpu", "half", "float", "double", "bfloat16", "eval", "train",
                          "requires_grad_"})
LIGHTNING_NO_GRAD = frozenset({"validation_step", "test_step", "predict_step"})

# Callee names: the thing named is the last word (`text_encoder`, `compute_loss`); a first word that
# is a verb names an action on it instead (`unwrap_model`, `build_loss`, `log_loss`).
LOSS_NAME = re.compile(r"(loss|losses|criterion|crit|cross_entropy(_with_logits)?|kl_div|loss_?fn|loss_func|"
                       r"loss_function)$", re.I)
MODEL_NAME = re.compile(r"(?i:(model|net|encoder|decoder|generator|discriminator|backbone|classifier|critic|"
                        r"policy)\w?$)|^[GD]$")
VERB = re.compile(r"^_*(get|build|make|create|load|save|init|setup|set|wrap|unwrap|prepare|freeze|unfreeze|copy|"
                  r"clone|move|convert|compile|register|export|update|patch|replace|reset|apply|fuse|quantize|"
                  r"prune|restore|sync|broadcast|to|from|check|is|has|print|log|plot|show|summarize|count|"
                  r"find|fetch|download|instantiate|define|new|configure|attach|enable|disable|dump|write|read|"
                  r"parse|train|fit|run|eval|evaluate|test|validate)_", re.I)
NOT_A_LOSS_VALUE = re.compile(r"(fn|func|function|weights?|scale|scaler|type|names?|cfg|config)$", re.I)
EVAL_NAME = re.compile(r"(^|_)(eval|evaluate|evaluation|valid|validate|validation|val|predict|prediction|"
                       r"infer|inference|test|testing)(_|$)", re.I)
TRAIN_NAME = re.compile(r"(^|_)train(ing)?(_|$)", re.I)
TRAIN_CALL = re.compile(r"^(train(ing)?_(step|batch|on_batch|iteration)|fit_batch)$")

KEEP = object()  # a `with` item that does not change grad mode

FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)
_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def key(node: ast.AST) -> str | None:
    """'x' or 'self.bank' for a name or a chain of attributes on a name; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):  # a loop, not recursion: chains can be long
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id] + parts[::-1])


def holder(node: ast.AST) -> str | None:
    """The object a store lands in: `self.history["x"]` -> 'self.history', `d.setdefault(k, [])` -> 'd'."""
    while True:
        if isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "setdefault", "get"):
            node = node.func.value
        else:
            return key(node)


def name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def first_arg(call: ast.Call) -> ast.AST | None:
    if call.args:
        return call.args[0]
    return call.keywords[0].value if call.keywords else None


def walk(nodes) -> list[ast.AST]:
    """Every node under `nodes`; nested functions, classes and lambdas are listed, not entered."""
    out, stack = [], list(nodes)
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, _NESTED):
            stack += ast.iter_child_nodes(node)
    return out


def pairs(node: ast.Assign) -> list[tuple[ast.AST, ast.AST]]:
    """(target, value) pairs, matching `a, b = x, y` element by element."""
    out = []
    for t in node.targets:
        v = node.value
        if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts):
            out += zip(t.elts, v.elts)
        else:
            out.append((t, v))
    return out


def target_keys(target: ast.AST) -> list[str]:
    if isinstance(target, (ast.Tuple, ast.List)):
        return [k for elt in target.elts for k in target_keys(elt)]
    if isinstance(target, ast.Starred):
        return target_keys(target.value)
    found = key(target)
    return [found] if found else []


def expr_keys(node: ast.AST) -> set[str]:
    return {k for n in walk([node]) if isinstance(n, (ast.Name, ast.Attribute)) for k in [key(n)] if k}


def grad_effect(node: ast.AST):
    """What `with node:` or `@node` does to grad mode: False, True, None (decided at run time) or KEEP."""
    call = node if isinstance(node, ast.Call) else None
    called = name(call.func if call else node)
    # Also a stored `inference_context()` and wrappers such as YOLOv5's `smart_inference_mode()`.
    if "no_grad" in called or called.startswith("inference") or "inference_mode" in called:
        return KEEP if call and is_false(first_arg(call)) else False  # inference_mode(False) is a no-op
    if called == "enable_grad":
        return True
    if called == "set_grad_enabled" and call is not None:
        arg = first_arg(call)
        return bool(arg.value) if isinstance(arg, ast.Constant) else None
    return KEEP


def is_backward_call(call: ast.Call) -> bool:
    return name(call.func) in ("backward", "manual_backward") or (key(call.func) or "").endswith("autograd.grad")


def reset_keys(stmts) -> set[str]:
    """The keys this block empties or rebinds unconditionally (not from themselves): `x = []`,
    `preds, labels = [], []`, `x.clear()`, also inside a `with`."""
    out: set[str] = set()
    for s in stmts:
        if isinstance(s, (ast.With, ast.AsyncWith)):
            out |= reset_keys(s.body)
        elif isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
            both = pairs(s) if isinstance(s, ast.Assign) else [(s.target, s.value)]
            for t, v in both:
                out.update(set(target_keys(t)) - expr_keys(v))
        elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute) \
                and s.value.func.attr == "clear" and key(s.value.func.value):
            out.add(key(s.value.func.value))
    return out


def flows(node: ast.AST, source: str) -> bool:
    """Does `source` reach this expression's value without passing through a detaching step?"""
    if key(node) == source:
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DETACHING:
        return False
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in NUMBER_BUILTINS:
        return False
    if isinstance(node, ast.Attribute) and node.attr in PLAIN_ATTRS or isinstance(node, ast.Compare):
        return False
    return any(flows(c, source) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr))


def reachable(start: set[str], edges: dict[str, set[str]]) -> set[str]:
    """`start` and everything reached from it along `edges` (node -> next nodes), each edge once."""
    found, todo = set(start), list(start)
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in found:
                found.add(nxt)
                todo.append(nxt)
    return found


def lossy_value(word: str) -> bool:
    """A name that, read without being assigned here, is taken to hold a loss tensor."""
    return "loss" in word.lower() and not NOT_A_LOSS_VALUE.search(word)

