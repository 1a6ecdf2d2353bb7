"""The checks lint runs, one module each; the walk (scope.py) calls every rule's hooks.

Contract: a rule is a `Rule` subclass, made once per walk of a function with that walk's `Scope`
(its state and value questions are the rule's evidence). It overrides the hooks it needs and adds
findings with `scope.report(...)`. To add a check, add a module here and list its class in `RULES`.
"""
from __future__ import annotations

from .base import Rule
from .growth import MemoryGrowth
from .missing_no_grad import MissingNoGrad
from .retained_graph import RetainedGraph

RULES: tuple[type[Rule], ...] = (RetainedGraph, MissingNoGrad, MemoryGrowth)
