"""`oomdoctor lint`: static checks (AST) for the memory bugs that `oomdoctor run` diagnoses at run time.

Contract: `lint_source(text, file)` -> list of `LintFinding`, pure; `lint_file(path)` reads a file;
`python_files(paths)` expands folders into their `*.py` files. A missing path, an unreadable,
non-regular or unparsable file raises `BadInput` (one line); a file over `MAX_BYTES`, `TooLarge`
(a note). Time is linear in the length of the code. Kinds are the runtime's vocabulary (design.md), and
each finding points where the runtime would:

- `retained-graph`: the line that keeps a tensor carrying its autograd graph in a holder that
  outlives a step (`total += loss`, `losses.append(loss)`, `self.bank = torch.cat([self.bank, f])`);
- `missing-no-grad`: the forward call of an evaluation loop that runs with gradients enabled, or of
  one call whose output is only looked at (numbers, detached copies, images);
- `memory-growth`: the line appending a tensor copy, every step, to a container never emptied.

How it decides: each function (and the module body) is walked in source order with an abstract
state: which names hold a tensor that carries a graph, whether grad mode is on, whether a model was
put in eval mode. Loops are walked twice so that what one iteration leaves behind is seen by the
next. A holder "outlives a step" when it accumulates across iterations of a training loop (one that
calls `backward()` or `.step()`) or of an evaluation loop, or lives on `self` or in a global. The
checks lean to silence: a holder that later feeds a `backward()` (gradient accumulation) is fine.
A line ending in `# oomdoctor: ignore` is never reported.

Where things are: check.py (entry points, bounded reads), facts.py (what the whole file tells each
function), scope.py (the walk over one function), env.py (its layered state), values.py (what an
expression carries), reach.py (where one binding is read), syntax.py (the vocabulary and AST
helpers), rules/ (one module per finding kind). Nothing here imports torch: lint must start fast.
Precision on real code is measured in docs/lint-precision.md.
"""
from __future__ import annotations

from .check import MAX_BYTES, TooLarge, lint_file, lint_source, python_files
from .finding import EXPLANATIONS, LintFinding

__all__ = ["EXPLANATIONS", "MAX_BYTES", "LintFinding", "TooLarge", "lint_file", "lint_source", "python_files"]
