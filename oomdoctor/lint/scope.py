"""The walk over one function's body (or the module's), in source order, with an abstract state.

Contract: `Scope(facts, node, qualname, cls).run()` walks the body from a fresh state and leaves its
findings in `findings` ((kind, line) -> LintFinding) and whether it returns a graph in
`returns_graph`. The state is which keys carry a graph (`env`), the grad mode and whether a model
was put in eval mode; loops are walked twice so that what one iteration leaves behind is seen by the
next, and branches merge where they join. The walk knows no rule: at each store and forward call it
calls the hooks of every rule in `rules/` (a new rule is a new file there).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

from .env import Env
from .facts import FileFacts
from .finding import LintFinding
from .rules import RULES
from .syntax import (APPENDS, EVAL_NAME, FUNCTIONS, KEEP, LIGHTNING_NO_GRAD, TRAIN_NAME, expr_keys, first_arg,
                     flows, grad_effect, holder, is_backward_call, is_false, key, name, reachable, target_keys,
                     walk)
from .values import Values


@dataclass
class Loop:
    node: ast.AST
    step: bool  # its iterations are training steps
    evaluating: bool  # started in an evaluation context (model.eval(), an evaluate() function)
    bounded: bool  # over a count or over layers, not over data: what it keeps is bounded by the code
    unguarded: bool = False  # an evaluation loop in which a forward runs with gradients on


class Scope(Values):
    """The walk over one function's body (or the module's), in source order."""

    def __init__(self, facts: FileFacts, node, qualname: str, cls: ast.ClassDef | None):
        self.facts, self.node, self.qualname = facts, node, qualname
        is_function = isinstance(node, FUNCTIONS)
        fn_name = node.name if is_function else ""
        nodes = walk(node.body)
        self.assigned = {k for n in nodes for k in _bound_keys(n)}
        self.params = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)} if is_function else set()
        self.is_module_method = cls is not None and cls.name in facts.module_classes
        self.feeds_backward = _feeds_backward(nodes)
        self.called = {name(n.func) for n in nodes if isinstance(n, ast.Call)}
        self.eval_named = bool(EVAL_NAME.search(fn_name)) and not TRAIN_NAME.search(fn_name) and \
            not (facts.is_test_file and fn_name.startswith("test"))
        self.start_grad: bool | None = True  # grad mode; None: decided at run time (set_grad_enabled(flag))
        if is_function and (any(grad_effect(d) is False for d in node.decorator_list)
                            or fn_name in facts.no_grad_functions):
            self.start_grad = False
        if cls is not None and fn_name in LIGHTNING_NO_GRAD and any("LightningModule" in ast.unparse(b)
                                                                    for b in cls.bases):
            self.start_grad = False  # Lightning runs these under no_grad

    def run(self) -> None:
        """Walk the body from a fresh state (facts about the file may have grown since last time)."""
        self.grad = self.start_grad
        self.eval_mode = False  # a model.eval() was seen and no model.train() since
        self.env = Env()  # key -> carries a graph, at this point of the walk
        self.scalars = set()  # keys holding a loss-like scalar
        self.loops: list[Loop] = []  # enclosing loops, innermost last
        self.path: list[tuple[list, int, ast.AST | None]] = []  # enclosing blocks: (body, index, its loop)
        self.conditional = 0  # how many `if`s deep inside the innermost loop
        self.findings: dict[tuple[str, int], LintFinding] = {}
        self.rules = [rule(self) for rule in RULES]
        self.returns_graph = False
        self.runs_forward = False  # a model's forward runs here (with gradients on, or maybe on)
        self.block(self.node.body)
        for rule in self.rules:
            rule.finish()

    def report(self, finding: LintFinding) -> None:
        self.findings.setdefault((finding.kind, finding.line), finding)

    # -- statements ------------------------------------------------------------------------------

    def block(self, stmts, loop: ast.AST | None = None) -> None:
        for index, stmt in enumerate(stmts):
            self.path.append((stmts, index, loop))
            self.stmt(stmt)
            self.path.pop()

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
        self.env.push()
        self.loops.append(Loop(s, self.facts.is_step_loop(s), self.eval_named or self.eval_mode, _bounded(s)))
        outer_conditional, self.conditional = self.conditional, 0
        for _ in range(2 if len(self.loops) < 4 else 1):  # twice: the next iteration sees what this one left
            if isinstance(s, (ast.For, ast.AsyncFor)):
                self.bind(s.target, self.taint(s.iter), s.iter)
            self.block(s.body, loop=s)
        self.conditional = outer_conditional
        self.loops.pop()
        self.env.join([self.env.pop()], fallthrough=True)
        self.block(s.orelse)

    def branches(self, bodies) -> None:
        ends, eval_start, evals = [], self.eval_mode, []
        self.conditional += 1
        for body in bodies:
            self.env.push()
            self.eval_mode = eval_start
            self.block(body)
            ends.append(self.env.pop())
            evals.append(self.eval_mode)
        self.conditional -= 1
        self.env.join(ends)
        self.eval_mode = any(evals)

    def with_block(self, s) -> None:
        saved = self.grad
        for item in s.items:
            self.scan(item.context_expr)
            effect = grad_effect(item.context_expr)
            if effect is not KEEP:
                self.grad = effect
            if item.optional_vars is not None:
                self.bind(item.optional_vars, self.taint(item.context_expr), item.context_expr)
        self.block(s.body)
        self.grad = saved

    def assign(self, s) -> None:
        targets = s.targets if isinstance(s, ast.Assign) else [s.target]
        graph = self.taint(s.value)
        for k in [k for t in targets for k in target_keys(t)]:  # `out, hidden = rnn(x, hidden)` too
            if graph and self.carried(k) and flows(s.value, k):
                for rule in self.rules:
                    rule.rebuilt(s, k, s.value)
        for target in targets:
            if isinstance(target, (ast.Tuple, ast.List)) and target.elts and isinstance(s.value, ast.Call) \
                    and self.is_loss_call(s.value):
                # `loss, loss_items = compute_loss(...)`: by convention only the first is the loss to
                # back-propagate; the rest are detached numbers for the logs.
                self.bind(target.elts[0], graph, s.value)
                for rest in target.elts[1:]:
                    self.bind(rest, False, s.value)
            else:
                self.bind(target, graph, s.value)

    def aug_assign(self, s: ast.AugAssign) -> None:
        k = holder(s.target)
        graph = self.taint(s.value)
        if graph and k and isinstance(s.op, (ast.Add, ast.Sub)) and self.grad is not False:
            for rule in self.rules:
                rule.added(s, k, s.value)
        if k and self.grad is not False:  # under no_grad the sum records no graph
            self.env[k] = self.env.get(k, False) or graph
            if self.scalar_like(s.value):
                self.scalars.add(k)

    def call_statement(self, s: ast.Expr, call: ast.Call) -> None:
        func = call.func
        if not isinstance(func, ast.Attribute):
            return
        if func.attr == "set_grad_enabled" and key(func.value) in ("torch", "torch.autograd"):
            effect = grad_effect(call)
            self.grad = self.grad if effect is KEEP else effect
        if func.attr == "detach_" and holder(func.value):  # `hidden[0].detach_()` cuts the graph in place
            self.env[holder(func.value)] = False
        if func.attr not in APPENDS or not call.args:
            return
        value = call.args[-1] if func.attr == "insert" else call.args[0]
        held = holder(func.value)
        if held is None:
            return
        for rule in self.rules:
            rule.appended(s, held, value)
        if self.taint(value):
            self.env[held] = True

    def bind(self, target: ast.AST, graph: bool, value: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.bind(elt, graph, value)
        elif isinstance(target, ast.Starred):
            self.bind(target.value, graph, value)
        elif isinstance(target, ast.Subscript):  # `d[k] = v`: the container now holds v
            held = holder(target)
            if held and not graph and held in expr_keys(value):
                self.env[held] = False  # `out["loss"] = out["loss"].detach()`: its graph entry, cut
            elif held:
                self.env[held] = self.env.get(held, False) or graph
        elif key(target):
            k = key(target)
            self.env[k] = graph
            (self.scalars.add if self.scalar_like(value) else self.scalars.discard)(k)

    def scan(self, node: ast.AST) -> None:
        """Calls in one statement's own expressions: forward calls for the rules, and `model.eval()` /
        `model.train()` for the evaluation context."""
        for n in self.facts.calls(node):
            if isinstance(n.func, ast.Attribute) and n.func.attr == "eval" and not n.args:
                self.eval_mode = True
            elif isinstance(n.func, ast.Attribute) and n.func.attr == "train":
                self.eval_mode = is_false(first_arg(n))
            elif self.grad is not False and self.is_forward(n):
                self.runs_forward = True
                if self.grad is not True:
                    continue  # decided at run time: no rule can tell
                loop = self.evaluation_loop()
                if loop is not None:
                    loop.unguarded = True
                for rule in self.rules:
                    rule.forward(n)

    def evaluation_loop(self) -> Loop | None:
        """The outermost enclosing loop that evaluates: started in an evaluation context, and neither
        back-propagates nor steps."""
        return next((lp for lp in self.loops if lp.evaluating and not lp.step), None)

    # -- where a holder lives --------------------------------------------------------------------

    def outlives_step(self, held: str, steps_only: bool = False) -> bool:
        """Does `held`, stored into here, accumulate across training steps (or evaluation batches)?"""
        return self.kept_by(held, steps_only) is not None

    def kept_by(self, held: str, steps_only: bool = False) -> Loop | str | None:
        """What makes `held`, stored into here, outlive a step: the loop across whose iterations it
        accumulates (a training loop, or an evaluation loop unless `steps_only`), "call" when it
        outlives a function that runs once per step, None when it is bounded."""
        for loop in reversed(self.loops):
            if self.facts.resets(loop.node, held):
                return None  # emptied every iteration of this loop: bounded by one iteration
            if loop.step and self._micro_batches(loop, held):
                return None
            if loop.step or (loop.evaluating and not steps_only):
                return loop
        if not isinstance(self.node, FUNCTIONS) or self.facts.resets(self.node, held):
            return None
        root = held.split(".")[0]
        # On `self` or in a global it outlives the call, and the function runs once per step.
        outlives_call = (root in ("self", "cls") and root in self.params and "." in held) or \
                        (root not in self.assigned and root not in self.params)
        return "call" if outlives_call else None


    def _micro_batches(self, loop: Loop, held: str) -> bool:
        """`for i in range(accumulation_steps): ...; loss.backward(); total += loss` in a function,
        the optimizer stepped after the loop: a plain local adds up one step's micro-batches and
        is gone when the call returns (pytorch-lr-finder's `_train_batch`)."""
        root = held.split(".")[0]
        return (loop.bounded and isinstance(self.node, FUNCTIONS) and "." not in held and "[" not in held
                and root in self.assigned and root not in self.params and not any(
                    isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "step"
                    for n in walk(loop.node.body)))


def _bounded(loop: ast.AST) -> bool:
    """A loop over `range(...)`, over a literal list, or over layers (`for layer in self.layers:
    h = layer(h)`): its length is set by the code, not by the data."""
    if not isinstance(loop, (ast.For, ast.AsyncFor)):
        return False
    it = loop.iter
    if isinstance(it, (ast.List, ast.Tuple)) or isinstance(it, ast.Call) and key(it.func) == "range":
        return True
    targets = set(target_keys(loop.target))
    return any(isinstance(n, ast.Call) and key(n.func) in targets for n in walk(loop.body))


def _bound_keys(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Assign):
        return [k for t in node.targets for k in target_keys(t)]
    if isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.NamedExpr)):
        return target_keys(node.target)
    if isinstance(node, ast.withitem) and node.optional_vars is not None:
        return target_keys(node.optional_vars)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    return []


def _feeds_backward(nodes) -> set[str]:
    """Keys whose value flows into a backward() in this scope: gradient accumulation, not a leak."""
    sources: dict[str, set[str]] = {}  # key stored into -> the keys its new value is made from
    for n in nodes:
        if isinstance(n, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and n.value is not None:
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            stored, made_from = {holder(t) for t in targets} - {None}, expr_keys(n.value)
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in APPENDS:
            stored, made_from = {holder(n.func.value)} - {None}, {k for a in n.args for k in expr_keys(a)}
        else:
            continue
        for k in stored:
            sources.setdefault(k, set()).update(made_from)
    backward = {k for n in nodes if isinstance(n, ast.Call) and is_backward_call(n) for k in expr_keys(n)}
    return reachable(backward, sources)
