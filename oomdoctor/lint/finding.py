"""A lint finding and what each kind means: the vocabulary the CLI prints and the runtime shares."""
from __future__ import annotations

from dataclasses import dataclass

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
