"""What an expression's value is, at one point of a function's walk: does it carry an autograd graph,
does it run a model's forward or a loss, is it a loss-like scalar.

Contract: `Values` holds the abstract state the walk (scope.py) updates statement by statement:
`env` (key -> carries a graph), `grad` (grad mode: True, False, or None when decided at run time)
and `scalars` (keys holding a loss-like scalar). Its methods only read that state.
"""
from __future__ import annotations

import ast

from .env import Env
from .facts import FileFacts
from .syntax import (COMPUTE_BUILTINS, CONTAINER_BUILTINS, CONTAINER_METHODS, DETACHING, LOSS_NAME, MODEL_NAME,
                     NUMBER_BUILTINS, PLAIN_ATTRS, REDUCTIONS, TORCH_FACTORIES, TORCH_ROOTS, TRAIN_CALL, VERB,
                     holder, key, lossy_value, name, target_keys)


class Values:
    """The value questions of one function's walk; the walk itself is `Scope`."""

    facts: FileFacts
    assigned: set[str]  # keys bound anywhere in the function
    is_module_method: bool
    env: Env
    grad: bool | None
    scalars: set[str]

    def carried(self, k: str) -> bool:
        """Does `k` hold a graph when this statement runs? On `self`, assume the previous call
        left what this statement stores."""
        if k in self.env:
            return self.env[k]
        return k.startswith(("self.", "cls."))

    def taint(self, node: ast.AST) -> bool:
        """Does this expression's value carry an autograd graph?"""
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
            return node.id not in self.assigned and lossy_value(node.id)
        if isinstance(node, ast.Attribute):
            if node.attr in PLAIN_ATTRS:
                return False
            k = key(node)
            if k in self.env:
                return self.env[k]
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
            tensor, other = _tensor_branch(node)
            return self.taint(tensor) or (other is not None and self.taint(other))
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return any(self.taint(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return any(self.taint(v) for v in node.values)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            return self.comprehension_taint(node)
        return False  # constants, comparisons, f-strings, lambdas

    def comprehension_taint(self, node) -> bool:
        self.env.push()  # the comprehension's own names, gone after it
        for gen in node.generators:
            for k in target_keys(gen.target):
                self.env[k] = self.taint(gen.iter)
        graph = self.taint(node.value if isinstance(node, ast.DictComp) else node.elt)
        self.env.pop()
        return graph

    def call_taint(self, call: ast.Call) -> bool:
        func, called = call.func, name(call.func)
        if isinstance(func, ast.Attribute) and called in DETACHING:
            return False
        if isinstance(func, ast.Name) and called in NUMBER_BUILTINS:
            return False
        if called in self.facts.returns_graph and (isinstance(func, ast.Name) or key(func.value) == "self"
                                                   or TRAIN_CALL.match(called)):  # `module.training_step(b)`
            return self.grad is not False
        if self.is_forward(call) or self.is_loss_call(call) and not _functional(func):
            return self.grad is not False  # a criterion object: assume what it is given carries a graph
        args = list(call.args) + [k.value for k in call.keywords]
        if isinstance(func, ast.Name) and called in CONTAINER_BUILTINS:
            return any(self.taint(a) for a in args)
        if isinstance(func, ast.Attribute) and called in CONTAINER_METHODS:
            return self.taint(func.value)
        if self.grad is False:
            return False  # nothing new records a graph under no_grad
        if isinstance(func, ast.Name):
            return called in COMPUTE_BUILTINS and any(self.taint(a) for a in args)
        if isinstance(func, ast.Attribute):
            if self.taint(func.value):
                return True  # a method of a graph tensor: .sum(), .view(), .to(), ...
            if _functional(func):  # `F.kl_div(p, q)` too: a graph only if an input has one
                return called not in TORCH_FACTORIES and any(self.taint(a) for a in args)
        return False

    def is_forward(self, call: ast.Call) -> bool:
        """A call that runs a model's forward."""
        func, facts = call.func, self.facts
        if isinstance(func, ast.Call):  # `nn.Linear(2, 3)(x)`, `Net()(x)`
            return facts.is_module_ctor(func, facts.modules)
        path, called = key(func) or holder(func), name(func)
        if facts.is_module_ctor(call, facts.modules) or self.is_loss_call(call):
            return False
        if path in facts.modules or (path == "self" and self.is_module_method):
            return True
        if isinstance(func, ast.Attribute) and called == "forward":
            return key(func.value) in facts.modules or key(func.value) == "self" or \
                bool(MODEL_NAME.search(name(func.value)))
        if called in facts.forwards and (isinstance(func, ast.Name) or key(func.value) == "self"):
            return True  # a local function that runs a forward and returns its output
        if called in facts.functions or called[:1].isupper() and called not in ("G", "D") or VERB.match(called):
            return False  # local functions have summaries; CamelCase builds an object
        return bool(MODEL_NAME.search(called))

    def is_loss_call(self, call: ast.Call) -> bool:
        called = name(call.func)
        if (key(call.func) or "") in self.facts.loss_modules:
            return True
        return bool(LOSS_NAME.search(called)) and not called[:1].isupper() and not VERB.match(called) and \
            called not in self.facts.functions

    def scalar_like(self, node: ast.AST) -> bool:
        """A loss-like scalar: kept as a number with `.item()` rather than `.detach()`."""
        if isinstance(node, (ast.Name, ast.Attribute)):
            return key(node) in self.scalars or lossy_value(name(node))
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in REDUCTIONS and not node.args and not node.keywords:
                return True
            return self.is_loss_call(node)
        if isinstance(node, ast.BinOp):
            return all(self.scalar_like(p) or isinstance(p, ast.Constant) for p in (node.left, node.right))
        return False


def _functional(func: ast.AST) -> bool:
    """`torch.x(...)`, `F.x(...)`, `nn.functional.x(...)`: a torch function of its arguments."""
    if not isinstance(func, ast.Attribute):
        return False
    path = key(func.value) or ""
    return path.split(".")[0] in TORCH_ROOTS or path.startswith("nn.functional")


def _tensor_branch(node: ast.IfExp) -> tuple[ast.AST, ast.AST | None]:
    """The branches of `a if test else b` that may hold a tensor: in `v.detach() if torch.is_tensor(v)
    else v`, the bare `v` of the other branch is not one."""
    test, body, orelse = node.test, node.body, node.orelse
    negated = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
    if negated:
        test, body, orelse = test.operand, orelse, body
    checked = None
    if isinstance(test, ast.Call) and test.args and (
            name(test.func) == "is_tensor" or name(test.func) == "isinstance" and len(test.args) == 2
            and "Tensor" in ast.dump(test.args[1])):
        checked = key(test.args[0])
    if checked is not None and key(orelse) == checked:
        return body, None
    return body, orelse
