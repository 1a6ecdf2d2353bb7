"""Static checks (AST) for the memory bugs that `oomdoctor run` diagnoses at run time.

Contract: `lint_source(text, file)` -> list of `LintFinding`, pure; `lint_file(path)` reads a file;
`python_files(paths)` expands folders into their `*.py` files. A missing path, an unreadable or
unparsable file raises `BadInput` (one line). Kinds are the runtime's vocabulary (design.md), and
each finding points where the runtime would:

- `retained-graph`: the line that keeps a tensor carrying its autograd graph in a holder that
  outlives a step (`total += loss`, `losses.append(loss)`, `self.bank = torch.cat([self.bank, f])`);
- `missing-no-grad`: the forward call of an evaluation loop that runs with gradients enabled;
- `memory-growth`: the line appending a tensor copy, every step, to a container never emptied.

How it decides: each function (and the module body) is walked in source order with an abstract
state: which names hold a tensor that carries a graph, whether grad mode is on, whether a model was
put in eval mode. Loops are walked twice so that what one iteration leaves behind is seen by the
next. A holder "outlives a step" when it accumulates across iterations of a training loop (one that
calls `backward()` or `.step()`) or of an evaluation loop, or lives on `self` or in a global. The
checks lean to silence: a holder that later feeds a `backward()` (gradient accumulation) is fine.
A line ending in `# oomdoctor: ignore` is never reported.
"""
from __future__ import annotations

import ast
import re
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInput

EXPLANATIONS = {
    "retained-graph": "A tensor that still carries its autograd graph is kept past its step: that graph, "
                      "and every graph linked to it, can never be freed, so memory grows each step.",
    "missing-no-grad": "With gradients on, every forward records an autograd graph and keeps activations "
                       "for a backward that never comes; under no_grad they are freed at once.",
    "memory-growth": "A copy of a tensor is added at every step to a container that is never emptied "
                     "or bounded: memory grows with the number of steps until it runs out.",
}


@dataclass(frozen=True)
class LintFinding:
    kind: str  # retained-graph | missing-no-grad | memory-growth
    file: str
    line: int
    function: str  # "Trainer.fit", or "<module>" for top-level code
    message: str
    before: str  # the code as written
    after: str  # the same code fixed


# Method calls and attributes whose result carries no graph (numbers, integer/bool tensors, metadata).
_DETACHING = frozenset({
    "item", "tolist", "numpy", "detach", "detach_", "argmax", "argmin", "argsort", "eq", "ne", "lt", "le",
    "gt", "ge", "long", "int", "bool", "size", "dim", "numel", "nelement", "isnan", "isinf", "isfinite",
    "nonzero", "count_nonzero", "backward", "stride", "is_contiguous", "data_ptr", "element_size"})
_PLAIN_ATTRS = frozenset({"data", "grad", "shape", "dtype", "device", "requires_grad", "is_leaf", "ndim",
                          "grad_fn", "is_cuda", "layout"})
_NUMBER_BUILTINS = frozenset({"float", "int", "bool", "str", "len", "repr", "format", "print", "isinstance",
                              "type", "id", "hash", "round"})
_CONTAINER_BUILTINS = frozenset({"list", "tuple", "sorted", "reversed", "iter", "next", "zip", "enumerate",
                                 "dict", "set"})  # same objects, regrouped: graph or not
_COMPUTE_BUILTINS = frozenset({"sum", "max", "min", "abs", "pow"})
_CONTAINER_METHODS = frozenset({"get", "setdefault", "pop", "values", "items", "copy", "popleft"})
_TORCH_ROOTS = frozenset({"torch", "F", "th", "functional"})
_TORCH_FACTORIES = frozenset({"tensor", "zeros", "ones", "empty", "full", "randn", "rand", "randint", "arange",
                              "linspace", "eye", "zeros_like", "ones_like", "empty_like", "full_like",
                              "randn_like", "rand_like", "randint_like", "randperm", "from_numpy"})
_APPENDS = frozenset({"append", "extend", "insert", "appendleft"})
_SHRINKS = frozenset({"pop", "popleft", "clear", "remove"})
_KEEP_CHAIN = frozenset({"detach", "clone", "to", "contiguous", "float", "half", "double", "bfloat16", "cuda"})
_REDUCTIONS = frozenset({"mean", "sum", "norm", "max", "min", "prod", "std", "var"})
_MODULE_MARKERS = frozenset({"eval", "train", "parameters", "named_parameters", "modules", "children",
                             "requires_grad_"})
_MODULE_WRAPPERS = frozenset({"compile", "DataParallel", "DistributedDataParallel", "DDP", "FSDP",
                              "FullyShardedDataParallel", "deepcopy", "AveragedModel"})
_MODULE_MOVES = frozenset({"to", "cuda", "cpu", "half", "float", "double", "bfloat16", "eval", "train",
                           "requires_grad_"})
_LIGHTNING_NO_GRAD = frozenset({"validation_step", "test_step", "predict_step"})

# Callee names: the thing named is the last word (`text_encoder`, `compute_loss`); a first word that
# is a verb names an action on it instead (`unwrap_model`, `build_loss`, `log_loss`).
_LOSS_NAME = re.compile(r"(loss|losses|criterion|crit|cross_entropy(_with_logits)?|kl_div|loss_?fn|loss_func|"
                        r"loss_function)$", re.I)
_MODEL_NAME = re.compile(r"(?i:(model|net|encoder|decoder|generator|discriminator|backbone|classifier|critic|"
                         r"policy)\w?$)|^[GD]$")
_VERB = re.compile(r"^_*(get|build|make|create|load|save|init|setup|set|wrap|unwrap|prepare|freeze|unfreeze|copy|"
                   r"clone|move|convert|compile|register|export|update|patch|replace|reset|apply|fuse|quantize|"
                   r"prune|restore|sync|broadcast|to|from|check|is|has|print|log|plot|show|summarize|count|"
                   r"find|fetch|download|instantiate|define|new|configure|attach|enable|disable|dump|write|read|"
                   r"parse|train|fit|run|eval|evaluate|test|validate)_", re.I)
_NOT_A_LOSS_VALUE = re.compile(r"(fn|func|function|weights?|scale|scaler|type|names?|cfg|config)$", re.I)
_EVAL_NAME = re.compile(r"(^|_)(eval|evaluate|evaluation|valid|validate|validation|val|predict|prediction|"
                        r"infer|inference|test|testing)(_|$)", re.I)
_TRAIN_NAME = re.compile(r"(^|_)train(ing)?(_|$)", re.I)
_TRAIN_CALL = re.compile(r"^(train(ing)?_(step|batch|on_batch|iteration)|fit_batch)$")

_KEEP = object()  # a `with` item that does not change grad mode


def lint_source(source: str, file: str = "<string>") -> list[LintFinding]:
    """Findings for one file's source text, in line order."""
    try:
        tree = ast.parse(source, filename=file)
    except SyntaxError as exc:
        raise BadInput(f"{file}:{exc.lineno or 0}: cannot parse: {exc.msg}") from None
    except ValueError as exc:  # null bytes in the source
        raise BadInput(f"{file}: cannot parse: {exc}") from None
    try:
        facts = _FileFacts(tree, source, file)
        findings = facts.analyse()
    except RecursionError:
        raise BadInput(f"{file}: code nested too deeply to analyse") from None
    kept = [f for f in findings if "oomdoctor: ignore" not in facts.lines[f.line - 1]]
    return sorted(kept, key=lambda f: (f.line, f.kind))


def lint_file(path: str | Path) -> list[LintFinding]:
    """Findings for one Python file; `BadInput` when it is missing, unreadable or not Python."""
    p = Path(path)
    if not p.exists():
        raise BadInput(f"no such file or folder: {path}")
    if p.is_dir():
        raise BadInput(f"{path} is a folder; give a Python file")
    try:
        with tokenize.open(p) as handle:  # honours an encoding cookie, like python does
            text = handle.read()
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise BadInput(f"cannot read {path}: {reason}") from None
    return lint_source(text, str(path))


def python_files(paths: list[str]) -> list[Path]:
    """The files to check: files as given, folders searched for `*.py` (hidden and cache folders
    skipped), in a stable order. A missing path fails before anything is checked."""
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise BadInput(f"no such file or folder: {raw}")
        if p.is_dir():
            found += sorted(f for f in p.rglob("*.py") if f.is_file() and not _skipped(f.relative_to(p)))
        else:
            found.append(p)
    return list(dict.fromkeys(found))


def _skipped(relative: Path) -> bool:
    return any(part.startswith(".") or part in ("__pycache__", "site-packages", "node_modules")
               for part in relative.parts[:-1])


# -- small AST helpers ---------------------------------------------------------------------------

def _key(node: ast.AST) -> str | None:
    """'x' or 'self.bank' for a name or a chain of attributes on a name; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _key(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _holder(node: ast.AST) -> str | None:
    """The object a store lands in: `self.history["x"]` -> 'self.history', `d.setdefault(k, [])` -> 'd'."""
    while True:
        if isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "setdefault", "get"):
            node = node.func.value
        else:
            return _key(node)


def _name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _is_false(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _first_arg(call: ast.Call) -> ast.AST | None:
    if call.args:
        return call.args[0]
    return call.keywords[0].value if call.keywords else None


_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _walk(nodes) -> list[ast.AST]:
    """Every node under `nodes`; nested functions, classes and lambdas are listed, not entered."""
    out, stack = [], list(nodes)
    while stack:
        node = stack.pop()
        out.append(node)
        if not isinstance(node, _NESTED):
            stack += ast.iter_child_nodes(node)
    return out


def _pairs(node: ast.Assign) -> list[tuple[ast.AST, ast.AST]]:
    """(target, value) pairs, matching `a, b = x, y` element by element."""
    out = []
    for t in node.targets:
        v = node.value
        if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts):
            out += zip(t.elts, v.elts)
        else:
            out.append((t, v))
    return out


def _target_keys(target: ast.AST) -> list[str]:
    if isinstance(target, (ast.Tuple, ast.List)):
        return [k for elt in target.elts for k in _target_keys(elt)]
    if isinstance(target, ast.Starred):
        return _target_keys(target.value)
    key = _key(target)
    return [key] if key else []


def _expr_keys(node: ast.AST) -> set[str]:
    return {k for n in _walk([node]) if isinstance(n, (ast.Name, ast.Attribute)) for k in [_key(n)] if k}


def _grad_effect(node: ast.AST):
    """What `with node:` or `@node` does to grad mode: False, True, None (decided at run time) or _KEEP."""
    call = node if isinstance(node, ast.Call) else None
    name = _name(call.func if call else node)
    if "no_grad" in name or name.startswith("inference"):  # also a stored `inference_context()`
        return _KEEP if call and _is_false(_first_arg(call)) else False  # inference_mode(False) is a no-op
    if name == "enable_grad":
        return True
    if name == "set_grad_enabled" and call is not None:
        arg = _first_arg(call)
        return bool(arg.value) if isinstance(arg, ast.Constant) else None
    return _KEEP


def _is_backward_call(call: ast.Call) -> bool:
    name = _name(call.func)
    return name in ("backward", "manual_backward") or (_key(call.func) or "").endswith("autograd.grad")


# -- facts about the whole file ------------------------------------------------------------------

class _FileFacts:
    """What one pass over the file tells every function: which names hold modules, what local
    functions return or do, which functions only run under no_grad, which holders ever shrink."""

    def __init__(self, tree: ast.Module, source: str, file: str):
        self.tree, self.file = tree, file
        self.source_bytes = source.encode("utf-8")
        # Lines as the parser counts them (str.splitlines would also split at form feeds), and where
        # each starts in UTF-8 bytes: ast column offsets count bytes.
        raw_lines = self.source_bytes.splitlines(keepends=True)
        self.lines = [line.decode("utf-8").rstrip("\r\n") for line in raw_lines] + [""]
        self.line_starts = [0]
        for line in raw_lines:
            self.line_starts.append(self.line_starts[-1] + len(line))
        base = Path(file).name
        self.is_test_file = base.startswith("test_") or base.endswith("_test.py") or base == "conftest.py"
        self.nodes = list(ast.walk(tree))
        self.functions: dict[str, list[ast.FunctionDef]] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        for node in self.nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
        self.module_classes = self._module_classes()
        self.modules, self.loss_modules = self._modules()
        self.does_backward = self._does_backward()
        self.no_grad_functions = self._no_grad_functions()
        self.shrunk = self._shrunk()
        self.returns_graph: set[str] = set()
        self._step_loops: dict[int, bool] = {}

    def analyse(self) -> list[LintFinding]:
        scopes = [_Scope(self, node, qual, cls) for node, qual, cls in self._scopes(self.tree, [], None)]
        for _ in range(2):  # the first round learns which local functions return a graph
            for scope in scopes:
                scope.run()
            self.returns_graph = {scope.node.name for scope in scopes if scope.returns_graph}
        return [f for scope in scopes for f in scope.findings.values()]

    def _scopes(self, node, prefix: list[str], cls: ast.ClassDef | None) -> list:
        """(node, qualified name, class of a method) for the module and every function in it."""
        out = [] if isinstance(node, ast.ClassDef) else [(node, ".".join(prefix) or "<module>", cls)]
        for child in _walk(node.body):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                method_of = node if isinstance(node, ast.ClassDef) else None
                out += self._scopes(child, prefix + [child.name], method_of)
        return out

    def _module_classes(self) -> set[str]:
        found: set[str] = set()
        for _ in range(3):  # classes deriving from local module classes
            for name, cls in self.classes.items():
                bases = {ast.unparse(b).split(".")[-1] for b in cls.bases}
                if bases & ({"Module", "LightningModule", "PreTrainedModel", "Sequential"} | found):
                    found.add(name)
        return found

    def is_module_ctor(self, node: ast.AST, known: set[str]) -> bool:
        if not isinstance(node, ast.Call):
            return _key(node) in known
        key, name = _key(node.func) or "", _name(node.func)
        if key.startswith(("nn.", "torch.nn.")) and name[:1].isupper() and "functional" not in key:
            return True
        if name in self.module_classes or "models." in key or name == "create_model":
            return True
        if name == "from_pretrained" and "Model" in key:
            return True
        if name in _MODULE_WRAPPERS:
            return bool(node.args) and self.is_module_ctor(node.args[0], known)
        if isinstance(node.func, ast.Attribute) and name in _MODULE_MOVES:
            return self.is_module_ctor(node.func.value, known)
        return False

    def _modules(self) -> tuple[set[str], set[str]]:
        modules: set[str] = set()
        for _ in range(2):  # `m = model.to(device)` needs `model` known first
            for node in self.nodes:
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    if self.is_module_ctor(node.value, modules):
                        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                        modules.update(k for t in targets for k in _target_keys(t))
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in _MODULE_MARKERS and _key(node.func.value):
                    modules.add(_key(node.func.value))
        losses = {k for k in modules if _LOSS_NAME.search(k.split(".")[-1])}
        for node in self.nodes:  # `ce = nn.CrossEntropyLoss()`: a loss, whatever its name
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                    _LOSS_NAME.search(_name(node.value.func)) and _name(node.value.func)[:1].isupper():
                losses.update(k for t in node.targets for k in _target_keys(t))
        return modules - losses, losses

    def _does_backward(self) -> set[str]:
        """Local functions that back-propagate, themselves or through the local functions they call."""
        calls = {name: [n for d in defs for n in _walk(d.body) if isinstance(n, ast.Call)]
                 for name, defs in self.functions.items()}
        found = {name for name, cs in calls.items() if any(_is_backward_call(c) for c in cs)}
        callees = {name: {_name(c.func) for c in cs} for name, cs in calls.items()}
        while True:
            more = {name for name, names in callees.items() if names & found} - found
            if not more:
                return found
            found |= more

    def _no_grad_functions(self) -> set[str]:
        """Local functions every call site of which runs under no_grad (syntactically)."""
        sites: dict[str, list[tuple[str | None, bool]]] = {}

        def visit(node, off: bool, caller: str | None):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                off = any(_grad_effect(d) is False for d in node.decorator_list)
                caller = node.name
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                off = off or any(_grad_effect(i.context_expr) is False for i in node.items)
            elif isinstance(node, ast.Call) and _name(node.func) in self.functions:
                sites.setdefault(_name(node.func), []).append((caller, off))
            for child in ast.iter_child_nodes(node):
                visit(child, off, caller)

        visit(self.tree, False, None)
        found: set[str] = set()
        while True:
            more = {f for f, s in sites.items() if all(off or c in found for c, off in s)} - found
            if not more:
                return found
            found |= more

    def _shrunk(self) -> set[str]:
        """Holders that something removes entries from, anywhere in the file."""
        out: set[str] = set()
        for node in self.nodes:
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SHRINKS:
                out.add(_holder(node.func.value) or "")
            elif isinstance(node, ast.Delete):
                out.update(_holder(t) or "" for t in node.targets)
            elif isinstance(node, ast.Assign):
                for t, value in _pairs(node):
                    h = _holder(t)
                    if isinstance(t, ast.Subscript) or any(isinstance(n, ast.Subscript) and _holder(n) == h
                                                           for n in ast.walk(value)):
                        out.add(h or "")  # `x[:] = ...`, `x = x[-k:]`
                    elif isinstance(value, ast.Call) and any(k.arg == "maxlen" for k in value.keywords):
                        out.add(h or "")  # deque(maxlen=...)
        return out

    def is_step_loop(self, loop: ast.AST) -> bool:
        """A loop whose iterations are training steps: it back-propagates or steps an optimizer."""
        if id(loop) not in self._step_loops:
            self._step_loops[id(loop)] = any(
                isinstance(n, ast.Call) and (
                    _is_backward_call(n) or (isinstance(n.func, ast.Attribute) and n.func.attr == "step")
                    or _name(n.func) in self.does_backward or _TRAIN_CALL.match(_name(n.func)))
                for n in _walk(loop.body))
        return self._step_loops[id(loop)]

    def offset(self, line: int, col: int) -> int:
        return self.line_starts[line - 1] + col

    def text(self, node: ast.AST) -> str:
        return self.source_bytes[self.offset(node.lineno, node.col_offset):
                                 self.offset(node.end_lineno, node.end_col_offset)].decode("utf-8")


# -- one function (or the module body) -----------------------------------------------------------

@dataclass
class _Loop:
    node: ast.AST
    step: bool  # its iterations are training steps
    evaluating: bool  # started in an evaluation context (model.eval(), an evaluate() function)


class _Scope:
    """The walk over one function's body (or the module's), in source order."""

    def __init__(self, facts: _FileFacts, node, qualname: str, cls: ast.ClassDef | None):
        self.facts, self.node, self.qualname = facts, node, qualname
        is_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        name = node.name if is_function else ""
        nodes = _walk(node.body)
        self.assigned = {k for n in nodes for k in self._bound_keys(n)}
        self.params = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)} if is_function else set()
        self.is_module_method = cls is not None and cls.name in facts.module_classes
        self.feeds_backward = self._feeds_backward(nodes)
        self.eval_named = bool(_EVAL_NAME.search(name)) and not _TRAIN_NAME.search(name) and \
            not (facts.is_test_file and name.startswith("test"))
        self.start_grad: bool | None = True  # grad mode; None: decided at run time (set_grad_enabled(flag))
        if is_function and (any(_grad_effect(d) is False for d in node.decorator_list)
                            or name in facts.no_grad_functions):
            self.start_grad = False
        if cls is not None and name in _LIGHTNING_NO_GRAD and any("LightningModule" in ast.unparse(b)
                                                                  for b in cls.bases):
            self.start_grad = False  # Lightning runs these under no_grad

    def run(self) -> None:
        """Walk the body from a fresh state (facts about the file may have grown since last time)."""
        self.grad = self.start_grad
        self.eval_mode = False  # a model.eval() was seen and no model.train() since
        self.env: dict[str, bool] = {}  # key -> carries a graph, at this point of the walk
        self.scalars: set[str] = set()  # keys holding a loss-like scalar
        self.loops: list[_Loop] = []  # enclosing loops, innermost last
        self.conditional = 0  # how many `if`s deep inside the innermost loop
        self.findings: dict[tuple[str, int], LintFinding] = {}
        self.reported_loops: set[int] = set()
        self.returns_graph = False
        self.block(self.node.body)

    @staticmethod
    def _bound_keys(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Assign):
            return [k for t in node.targets for k in _target_keys(t)]
        if isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.NamedExpr)):
            return _target_keys(node.target)
        if isinstance(node, ast.withitem) and node.optional_vars is not None:
            return _target_keys(node.optional_vars)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return [(a.asname or a.name).split(".")[0] for a in node.names]
        return []

    @staticmethod
    def _feeds_backward(nodes) -> set[str]:
        """Keys whose value flows into a backward() in this scope: gradient accumulation, not a leak."""
        feeds = {k for n in nodes if isinstance(n, ast.Call) and _is_backward_call(n) for k in _expr_keys(n)}
        flows = []
        for n in nodes:
            if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and n.value is not None:
                targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                flows.append(({_holder(t) for t in targets} - {None}, _expr_keys(n.value)))
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _APPENDS:
                flows.append(({_holder(n.func.value)} - {None}, {k for a in n.args for k in _expr_keys(a)}))
        while True:
            more = {k for targets, sources in flows if targets & feeds for k in sources} - feeds
            if not more:
                return feeds
            feeds |= more

    # -- statements ------------------------------------------------------------------------------

    def block(self, stmts) -> None:
        for stmt in stmts:
            self.stmt(stmt)

    def stmt(self, s: ast.stmt) -> None:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return  # their own scopes
        if isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            return self.loop(s)
        if isinstance(s, ast.If):
            self.scan(s.test)
            return self.branches([s.body, s.orelse])
        if isinstance(s, (ast.With, ast.AsyncWith)):
            return self.with_block(s)
        if isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            self.block(s.body)
            self.branches([s.orelse] + [h.body for h in s.handlers])
            return self.block(s.finalbody)
        if isinstance(s, getattr(ast, "Match", ())):  # Python 3.10+
            self.scan(s.subject)
            return self.branches([c.body for c in s.cases] + [[]])
        self.scan(s)
        if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
            self.assign(s)
        elif isinstance(s, ast.AugAssign):
            self.aug_assign(s)
        elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call):
            self.call_statement(s, s.value)
        elif isinstance(s, ast.Return) and s.value is not None and self.taint(s.value):
            self.returns_graph = True

    def loop(self, s) -> None:
        self.scan(s.iter if isinstance(s, (ast.For, ast.AsyncFor)) else s.test)
        before = dict(self.env)
        self.loops.append(_Loop(s, self.facts.is_step_loop(s), self.eval_named or self.eval_mode))
        outer_conditional, self.conditional = self.conditional, 0
        for _ in range(2 if len(self.loops) < 4 else 1):  # twice: the next iteration sees what this one left
            if isinstance(s, (ast.For, ast.AsyncFor)):
                self.bind(s.target, self.taint(s.iter), s.iter)
            self.block(s.body)
        self.conditional = outer_conditional
        self.loops.pop()
        self.env = _merge([before, self.env])
        self.block(s.orelse)

    def branches(self, bodies) -> None:
        start, ends = dict(self.env), []
        eval_start, evals = self.eval_mode, []
        self.conditional += 1
        for body in bodies:
            self.env, self.eval_mode = dict(start), eval_start
            self.block(body)
            ends.append(self.env)
            evals.append(self.eval_mode)
        self.conditional -= 1
        self.env, self.eval_mode = _merge(ends), any(evals)

    def with_block(self, s) -> None:
        saved = self.grad
        for item in s.items:
            self.scan(item.context_expr)
            effect = _grad_effect(item.context_expr)
            if effect is not _KEEP:
                self.grad = effect
            if item.optional_vars is not None:
                self.bind(item.optional_vars, self.taint(item.context_expr), item.context_expr)
        self.block(s.body)
        self.grad = saved

    def assign(self, s) -> None:
        targets = s.targets if isinstance(s, ast.Assign) else [s.target]
        graph = self.taint(s.value)
        for key in [k for t in targets for k in _target_keys(t)]:  # `out, hidden = rnn(x, hidden)` too
            if graph and self.carried(key) and _flows(s.value, key):
                self.retained(s, key, s.value, f"`{key}` is rebuilt from itself and a tensor that carries its "
                                                f"autograd graph: each step's graph links to the previous one's")
        for target in targets:
            self.bind(target, graph, s.value)

    def aug_assign(self, s: ast.AugAssign) -> None:
        key = _holder(s.target)
        graph = self.taint(s.value)
        if graph and key and isinstance(s.op, (ast.Add, ast.Sub)) and self.grad is not False:
            self.retained(s, key, s.value, f"`{key}` adds up `{self.facts.text(s.value)}`, a tensor that carries "
                                           f"its autograd graph: every step's graph stays alive")
        if key and self.grad is not False:  # under no_grad the sum records no graph
            self.env[key] = self.env.get(key, False) or graph
            if self.scalar_like(s.value):
                self.scalars.add(key)

    def call_statement(self, s: ast.Expr, call: ast.Call) -> None:
        func = call.func
        if isinstance(func, ast.Name) or not isinstance(func, ast.Attribute):
            return
        if func.attr == "set_grad_enabled" and _key(func.value) in ("torch", "torch.autograd"):
            effect = _grad_effect(call)
            self.grad = self.grad if effect is _KEEP else effect
        if func.attr not in _APPENDS or not call.args:
            return
        value = call.args[-1] if func.attr == "insert" else call.args[0]
        holder = _holder(func.value)
        if holder is None:
            return
        if self.taint(value):
            # A container that grows per step: kept values are better off the device too.
            self.retained(s, holder, value, f"`{holder}` keeps `{self.facts.text(value)}`, a tensor that carries "
                                            f"its autograd graph: it grows by one graph per step", ".detach().cpu()")
            self.env[holder] = True
        elif self.grows(holder, value):
            self.findings.setdefault(("memory-growth", s.lineno), LintFinding(
                "memory-growth", self.facts.file, s.lineno, self.qualname,
                f"`{holder}` gets a copy of `{self.facts.text(value)}` at every step and is never emptied",
                self.snippet(s), self.snippet(s) + f"\ndel {self.facts.text(func.value)}[:-100]  "
                                                   f"# keep a bounded window, or store numbers (.item())"))

    def bind(self, target: ast.AST, graph: bool, value: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.bind(elt, graph, value)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, graph, value)
        elif isinstance(target, ast.Subscript):  # `d[k] = v`: the container now holds v
            holder = _holder(target)
            if holder:
                self.env[holder] = self.env.get(holder, False) or graph
        elif _key(target):
            key = _key(target)
            self.env[key] = graph
            (self.scalars.add if self.scalar_like(value) else self.scalars.discard)(key)

    # -- the checks ------------------------------------------------------------------------------

    def retained(self, stmt: ast.stmt, holder: str, value: ast.AST, message: str, detach: str = ".detach()") -> None:
        if holder in self.feeds_backward or not self.outlives_step(holder):
            return
        edits = [(leaf, ".item()" if self.scalar_like(leaf) else detach) for leaf in self.leaves(value, holder)]
        self.findings.setdefault(("retained-graph", stmt.lineno), LintFinding(
            "retained-graph", self.facts.file, stmt.lineno, self.qualname, message,
            self.snippet(stmt), self.snippet(stmt, edits)))

    def outlives_step(self, holder: str, steps_only: bool = False) -> bool:
        """Does `holder`, stored into here, accumulate across training steps (or evaluation batches)?"""
        for loop in reversed(self.loops):
            if _resets(loop.node.body, holder):
                return False  # emptied every iteration of this loop: bounded by one iteration
            if loop.step or (loop.evaluating and not steps_only):
                return True
        if not isinstance(self.node, (ast.FunctionDef, ast.AsyncFunctionDef)) or _resets(self.node.body, holder):
            return False
        root = holder.split(".")[0]
        # On `self` or in a global it outlives the call, and the function runs once per step.
        return (root in ("self", "cls") and root in self.params and "." in holder) or \
               (root not in self.assigned and root not in self.params)

    def grows(self, holder: str, value: ast.AST) -> bool:
        """A tensor copy appended at every training step to a holder that nothing ever shrinks."""
        if self.conditional or holder in self.facts.shrunk or holder in self.feeds_backward or not self.loops:
            return False
        chain, node = [], value
        while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _KEEP_CHAIN:
            chain.append(node.func.attr)
            node = node.func.value
        if not {"detach", "clone"} & set(chain) or not self.taint(node) or self.scalar_like(node):
            return False
        return self.outlives_step(holder, steps_only=True)

    def scan(self, node: ast.AST) -> None:
        """Forward calls in one statement's own expressions: the missing-no-grad check, and
        `model.eval()` / `model.train()` for the evaluation context."""
        for n in _walk([node]):
            if not isinstance(n, ast.Call):
                continue
            if isinstance(n.func, ast.Attribute) and n.func.attr == "eval" and not n.args:
                self.eval_mode = True
            elif isinstance(n.func, ast.Attribute) and n.func.attr == "train":
                self.eval_mode = _is_false(_first_arg(n))
            elif self.grad is True and self.is_forward(n):
                self.unguarded_forward(n)

    def unguarded_forward(self, call: ast.Call) -> None:
        loop = next((lp for lp in self.loops if lp.evaluating and not lp.step), None)
        if loop is None or id(loop.node) in self.reported_loops:
            return
        self.reported_loops.add(id(loop.node))
        header = self.header(loop.node)
        self.findings.setdefault(("missing-no-grad", call.lineno), LintFinding(
            "missing-no-grad", self.facts.file, call.lineno, self.qualname,
            f"`{self.facts.text(call.func)}(...)` runs in an evaluation loop with gradients enabled: each forward "
            f"builds an autograd graph nobody back-propagates",
            header, "with torch.no_grad():\n" + textwrap.indent(header, "    ")))

    # -- values ----------------------------------------------------------------------------------

    def carried(self, key: str) -> bool:
        """Does `key` hold a graph when this statement runs? On `self`, assume the previous call
        left what this statement stores."""
        if key in self.env:
            return self.env[key]
        return key.startswith(("self.", "cls."))

    def taint(self, node: ast.AST) -> bool:
        """Does this expression's value carry an autograd graph?"""
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
            return node.id not in self.assigned and _lossy_value(node.id)
        if isinstance(node, ast.Attribute):
            if node.attr in _PLAIN_ATTRS:
                return False
            key = _key(node)
            if key in self.env:
                return self.env[key]
            return self.taint(node.value)  # `outputs.loss` of a model's outputs
        if isinstance(node, ast.Call):
            return self.call_taint(node)
        if isinstance(node, (ast.Subscript, ast.Starred, ast.Await, ast.NamedExpr)):
            return self.taint(node.value)
        if isinstance(node, (ast.BinOp, ast.UnaryOp)):
            if self.grad is False or isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                return False
            parts = [node.left, node.right] if isinstance(node, ast.BinOp) else [node.operand]
            return any(self.taint(p) for p in parts)
        if isinstance(node, ast.BoolOp):
            return any(self.taint(v) for v in node.values)
        if isinstance(node, ast.IfExp):
            return self.taint(node.body) or self.taint(node.orelse)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return any(self.taint(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return any(self.taint(v) for v in node.values)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            return self.comprehension_taint(node)
        return False  # constants, comparisons, f-strings, lambdas

    def comprehension_taint(self, node) -> bool:
        saved = dict(self.env)
        for gen in node.generators:
            for key in _target_keys(gen.target):
                self.env[key] = self.taint(gen.iter)
        graph = self.taint(node.value if isinstance(node, ast.DictComp) else node.elt)
        self.env = saved
        return graph

    def call_taint(self, call: ast.Call) -> bool:
        func, name = call.func, _name(call.func)
        if isinstance(func, ast.Attribute) and name in _DETACHING:
            return False
        if isinstance(func, ast.Name) and name in _NUMBER_BUILTINS:
            return False
        if name in self.facts.returns_graph and (isinstance(func, ast.Name) or _key(func.value) == "self"):
            return self.grad is not False
        if self.is_forward(call) or self.is_loss_call(call):
            return self.grad is not False
        args = list(call.args) + [k.value for k in call.keywords]
        if isinstance(func, ast.Name) and name in _CONTAINER_BUILTINS:
            return any(self.taint(a) for a in args)
        if isinstance(func, ast.Attribute) and name in _CONTAINER_METHODS:
            return self.taint(func.value)
        if self.grad is False:
            return False  # nothing new records a graph under no_grad
        if isinstance(func, ast.Name):
            return name in _COMPUTE_BUILTINS and any(self.taint(a) for a in args)
        if isinstance(func, ast.Attribute):
            if self.taint(func.value):
                return True  # a method of a graph tensor: .sum(), .view(), .to(), ...
            root = (_key(func.value) or "").split(".")[0]
            if root in _TORCH_ROOTS or (_key(func.value) or "").startswith("nn.functional"):
                return name not in _TORCH_FACTORIES and any(self.taint(a) for a in args)
        return False

    def is_forward(self, call: ast.Call) -> bool:
        """A call that runs a model's forward."""
        func, facts = call.func, self.facts
        if isinstance(func, ast.Call):  # `nn.Linear(2, 3)(x)`, `Net()(x)`
            return facts.is_module_ctor(func, facts.modules)
        key, name = _key(func) or _holder(func), _name(func)
        if facts.is_module_ctor(call, facts.modules) or self.is_loss_call(call):
            return False
        if key in facts.modules or (key == "self" and self.is_module_method):
            return True
        if isinstance(func, ast.Attribute) and name == "forward":
            return _key(func.value) in facts.modules or _key(func.value) == "self" or \
                bool(_MODEL_NAME.search(_name(func.value)))
        if name in facts.functions or name[:1].isupper() and name not in ("G", "D") or _VERB.match(name):
            return False  # local functions have summaries; CamelCase builds an object
        return bool(_MODEL_NAME.search(name))

    def is_loss_call(self, call: ast.Call) -> bool:
        name = _name(call.func)
        if (_key(call.func) or "") in self.facts.loss_modules:
            return True
        return bool(_LOSS_NAME.search(name)) and not name[:1].isupper() and not _VERB.match(name) and \
            name not in self.facts.functions

    def scalar_like(self, node: ast.AST) -> bool:
        """A loss-like scalar: kept as a number with `.item()` rather than `.detach()`."""
        if isinstance(node, (ast.Name, ast.Attribute)):
            key = _key(node)
            return key in self.scalars or _lossy_value(_name(node))
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _REDUCTIONS and not node.args and not node.keywords:
                return True
            return self.is_loss_call(node)
        if isinstance(node, ast.BinOp):
            return all(self.scalar_like(p) or isinstance(p, ast.Constant) for p in (node.left, node.right))
        return False

    def leaves(self, node: ast.AST, holder: str) -> list[ast.AST]:
        """The parts of a value that bring a graph in, other than the holder itself: what to detach."""
        if _key(node) == holder or _holder(node) == holder or not self.taint(node):
            return []
        if isinstance(node, ast.BinOp):
            return self.leaves(node.left, holder) + self.leaves(node.right, holder)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return [leaf for e in node.elts for leaf in self.leaves(e, holder)]
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Call):
            return self.leaves(node.value, holder)  # torch.cat([...])[-k:]
        if isinstance(node, ast.Call) and _name(node.func) in ("cat", "stack", "concat", "hstack", "vstack"):
            return [leaf for a in node.args for leaf in self.leaves(a, holder)]
        return [node]

    # -- source text -----------------------------------------------------------------------------

    def snippet(self, stmt: ast.stmt, edits=()) -> str:
        """The statement's source, dedented, with each (node, suffix) edit applied."""
        facts = self.facts
        start = facts.offset(stmt.lineno, stmt.col_offset)
        text = facts.source_bytes[start:facts.offset(stmt.end_lineno, stmt.end_col_offset)]
        for node, suffix in sorted(edits, key=lambda e: -facts.offset(e[0].lineno, e[0].col_offset)):
            a = facts.offset(node.lineno, node.col_offset) - start
            b = facts.offset(node.end_lineno, node.end_col_offset) - start
            piece = text[a:b].decode("utf-8")
            simple = isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript))
            text = text[:a] + ((piece if simple else f"({piece})") + suffix).encode("utf-8") + text[b:]
        return textwrap.dedent(" " * stmt.col_offset + text.decode("utf-8"))

    def header(self, loop) -> str:
        """A loop's first line(s), up to its body, dedented."""
        last = max(loop.lineno, loop.body[0].lineno - 1)
        return textwrap.dedent("\n".join(self.facts.lines[loop.lineno - 1:last])).strip()


def _merge(envs: list[dict[str, bool]]) -> dict[str, bool]:
    """Where paths join, a key carries a graph if it does on any path."""
    out: dict[str, bool] = {}
    for env in envs:
        for key, graph in env.items():
            out[key] = out.get(key, False) or graph
    return out


def _resets(stmts, holder: str) -> bool:
    """Does this block empty or rebind `holder` unconditionally (not from itself)?"""
    for s in stmts:
        if isinstance(s, (ast.With, ast.AsyncWith)) and _resets(s.body, holder):
            return True
        if isinstance(s, (ast.Assign, ast.AnnAssign)) and s.value is not None:
            pairs = _pairs(s) if isinstance(s, ast.Assign) else [(s.target, s.value)]
            if any(holder in _target_keys(t) and holder not in _expr_keys(v) for t, v in pairs):
                return True  # also `preds, labels = [], []`
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute) \
                and s.value.func.attr == "clear" and _key(s.value.func.value) == holder:
            return True
    return False


def _flows(node: ast.AST, key: str) -> bool:
    """Does `key` reach this expression's value without passing through a detaching step?"""
    if _key(node) == key:
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _DETACHING:
        return False
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NUMBER_BUILTINS:
        return False
    if isinstance(node, ast.Attribute) and node.attr in _PLAIN_ATTRS or isinstance(node, ast.Compare):
        return False
    return any(_flows(c, key) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr))


def _lossy_value(name: str) -> bool:
    """A name that, read without being assigned here, is taken to hold a loss tensor."""
    return "loss" in name.lower() and not _NOT_A_LOSS_VALUE.search(name)
