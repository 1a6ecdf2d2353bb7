"""Facts about a whole file that every function's walk relies on.

Contract: `FileFacts(tree, source, file)` computes, once per file, which names hold modules or loss
modules, which local functions back-propagate or run only under no_grad, which holders ever shrink;
it also owns the source text (exact snippets by AST position, loop headers). `returns_graph` and
`forwards` are filled in by the caller between rounds of the walk.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from .syntax import (FUNCTIONS, LOSS_NAME, MODULE_MARKERS, MODULE_MOVES, MODULE_WRAPPERS, SHRINKS, TRAIN_CALL,
                     first_arg, grad_effect, holder, is_backward_call, is_false, key, name, pairs, reachable,
                     reset_keys, target_keys, walk)


class FileFacts:
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
            if isinstance(node, FUNCTIONS):
                self.functions.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
        self.module_classes = self._module_classes()
        self.modules, self.loss_modules = self._modules()
        self.does_backward = self._does_backward()
        self.no_grad_functions = self._no_grad_functions()
        self.shrunk = self._shrunk()
        self.frozen = self._frozen()
        self.returns_graph: set[str] = set()  # local functions that return a graph (learnt by the walk)
        self.forwards: set[str] = set()  # ...of a forward they run: `def _forward(self, b): return self.model(b)`
        self._memo: dict[tuple, object] = {}

    def scopes(self, node=None, prefix: tuple[str, ...] = (), cls: ast.ClassDef | None = None) -> list:
        """(node, qualified name, class of a method) for the module and every function in it."""
        node = self.tree if node is None else node
        out = [] if isinstance(node, ast.ClassDef) else [(node, ".".join(prefix) or "<module>", cls)]
        for child in walk(node.body):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                method_of = node if isinstance(node, ast.ClassDef) else None
                out += self.scopes(child, prefix + (child.name,), method_of)
        return out

    def _module_classes(self) -> set[str]:
        found: set[str] = set()
        for _ in range(3):  # classes deriving from local module classes
            for cls_name, cls in self.classes.items():
                bases = {ast.unparse(b).split(".")[-1] for b in cls.bases}
                if bases & ({"Module", "LightningModule", "PreTrainedModel", "Sequential"} | found):
                    found.add(cls_name)
        return found

    def is_module_ctor(self, node: ast.AST, known: set[str]) -> bool:
        if not isinstance(node, ast.Call):
            return key(node) in known
        path, called = key(node.func) or "", name(node.func)
        if path.startswith(("nn.", "torch.nn.")) and called[:1].isupper() and "functional" not in path:
            return True
        if called in self.module_classes or "models." in path or called == "create_model":
            return True
        if called == "from_pretrained" and "Model" in path:
            return True
        if called in MODULE_WRAPPERS:
            return bool(node.args) and self.is_module_ctor(node.args[0], known)
        if isinstance(node.func, ast.Attribute) and called in MODULE_MOVES:
            return self.is_module_ctor(node.func.value, known)
        return False

    def _modules(self) -> tuple[set[str], set[str]]:
        modules: set[str] = set()
        for _ in range(2):  # `m = model.to(device)` needs `model` known first
            for node in self.nodes:
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    if self.is_module_ctor(node.value, modules):
                        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                        modules.update(k for t in targets for k in target_keys(t))
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                        node.func.attr in MODULE_MARKERS and key(node.func.value):
                    modules.add(key(node.func.value))
        losses = {k for k in modules if LOSS_NAME.search(k.split(".")[-1])}
        for node in self.nodes:  # `ce = nn.CrossEntropyLoss()`: a loss, whatever its name
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                    LOSS_NAME.search(name(node.value.func)) and name(node.value.func)[:1].isupper():
                losses.update(k for t in node.targets for k in target_keys(t))
        return modules - losses, losses

    def _does_backward(self) -> set[str]:
        """Local functions that back-propagate, themselves or through the local functions they call."""
        calls = {fn: [n for d in defs for n in walk(d.body) if isinstance(n, ast.Call)]
                 for fn, defs in self.functions.items()}
        callers: dict[str, set[str]] = {}
        for fn, cs in calls.items():
            for c in cs:
                callers.setdefault(name(c.func), set()).add(fn)
        return reachable({fn for fn, cs in calls.items() if any(is_backward_call(c) for c in cs)}, callers)

    def _no_grad_functions(self) -> set[str]:
        """Local functions every call site of which runs under no_grad (syntactically): under a
        no_grad block or decorator, or in a function that itself only runs under no_grad."""
        waiting: dict[str, int] = {}  # function -> its call sites not yet known to run under no_grad
        sites_in: dict[str | None, list[str]] = {}  # caller -> the functions its grad-on sites call
        # An explicit stack, not recursion: deeply nested expressions must not overflow it.
        stack: list[tuple[ast.AST, bool, str | None]] = [(self.tree, False, None)]
        while stack:
            node, off, caller = stack.pop()
            if isinstance(node, FUNCTIONS):
                off = any(grad_effect(d) is False for d in node.decorator_list)
                caller = node.name
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                off = off or any(grad_effect(i.context_expr) is False for i in node.items)
            elif isinstance(node, ast.Call) and name(node.func) in self.functions:
                callee = name(node.func)
                waiting[callee] = waiting.get(callee, 0) + (not off)
                if not off:
                    sites_in.setdefault(caller, []).append(callee)
            stack += [(child, off, caller) for child in ast.iter_child_nodes(node)]
        found = {fn for fn, n in waiting.items() if n == 0}
        todo = list(found)
        while todo:  # a function found frees the call sites inside it
            for callee in sites_in.get(todo.pop(), ()):
                waiting[callee] -= 1
                if waiting[callee] == 0 and callee not in found:
                    found.add(callee)
                    todo.append(callee)
        return found

    def _shrunk(self) -> set[str]:
        """Holders that something removes entries from, anywhere in the file."""
        out: set[str] = set()
        for node in self.nodes:
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SHRINKS:
                out.add(holder(node.func.value) or "")
            elif isinstance(node, ast.Delete):
                out.update(holder(t) or "" for t in node.targets)
            elif isinstance(node, ast.Assign):
                for t, value in pairs(node):
                    h = holder(t)
                    if isinstance(t, ast.Subscript) or any(isinstance(n, ast.Subscript) and holder(n) == h
                                                           for n in ast.walk(value)):
                        out.add(h or "")  # `x[:] = ...`, `x = x[-k:]`
                    elif isinstance(value, ast.Call) and any(k.arg == "maxlen" for k in value.keywords):
                        out.add(h or "")  # deque(maxlen=...)
        return out

    def _frozen(self) -> set[str]:
        """Modules whose parameters are frozen (`m.requires_grad_(False)`, or `p.requires_grad = False`
        for each `p` in `m.parameters()`): their forward records no graph of its own."""
        out: set[str] = set()
        for node in self.nodes:
            if isinstance(node, ast.Call) and name(node.func) == "requires_grad_" and is_false(first_arg(node)):
                out.add(key(node.func.value) or "")
            elif isinstance(node, (ast.For, ast.AsyncFor)) and isinstance(node.iter, ast.Call) and \
                    name(node.iter.func) in ("parameters", "named_parameters") and any(
                        isinstance(n, ast.Assign) and is_false(n.value) and
                        any(isinstance(t, ast.Attribute) and t.attr == "requires_grad" for t in n.targets)
                        for n in walk(node.body)):
                out.add(key(node.iter.func.value) if isinstance(node.iter.func, ast.Attribute) else "")
        return out - {"", None}

    def is_step_loop(self, loop: ast.AST) -> bool:
        """A loop whose iterations are training steps: it back-propagates or steps an optimizer."""
        return self.memo(("step loop", id(loop)), lambda: any(
            isinstance(n, ast.Call) and (
                is_backward_call(n) or (isinstance(n.func, ast.Attribute) and n.func.attr == "step")
                or name(n.func) in self.does_backward or TRAIN_CALL.match(name(n.func)))
            for n in walk(loop.body)))

    def memo(self, question: tuple, answer):
        """`answer()`, computed once per question: every pass of the walk over a loop body, and every
        round, asks the same questions about the same code; answering each once keeps lint linear."""
        if question not in self._memo:
            self._memo[question] = answer()
        return self._memo[question]

    def calls(self, node: ast.AST) -> list[ast.Call]:
        """The calls in a statement's own expressions, in walk order."""
        return self.memo(("calls", id(node)), lambda: [n for n in walk([node]) if isinstance(n, ast.Call)])

    def resets(self, block: ast.AST, held: str) -> bool:
        """Does the body of this loop or function empty or rebind `held` unconditionally?"""
        return held in self.memo(("resets", id(block)), lambda: reset_keys(block.body))

    # -- source text -----------------------------------------------------------------------------

    def offset(self, line: int, col: int) -> int:
        return self.line_starts[line - 1] + col

    def text(self, node: ast.AST) -> str:
        return self.source_bytes[self.offset(node.lineno, node.col_offset):
                                 self.offset(node.end_lineno, node.end_col_offset)].decode("utf-8")

    def snippet(self, stmt: ast.stmt, edits=()) -> str:
        """The statement's source, dedented, with each (node, suffix) edit applied."""
        start = self.offset(stmt.lineno, stmt.col_offset)
        text = self.source_bytes[start:self.offset(stmt.end_lineno, stmt.end_col_offset)]
        for node, suffix in sorted(edits, key=lambda e: -self.offset(e[0].lineno, e[0].col_offset)):
            a = self.offset(node.lineno, node.col_offset) - start
            b = self.offset(node.end_lineno, node.end_col_offset) - start
            piece = text[a:b].decode("utf-8")
            simple = isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript))
            text = text[:a] + ((piece if simple else f"({piece})") + suffix).encode("utf-8") + text[b:]
        return textwrap.dedent(" " * stmt.col_offset + text.decode("utf-8"))

    def header(self, loop) -> str:
        """A loop's first line(s), up to its body, dedented."""
        last = max(loop.lineno, loop.body[0].lineno - 1)
        return textwrap.dedent("\n".join(self.lines[loop.lineno - 1:last])).strip()
