"""The autograd nodes the graph probe marks, and what its attribution keeps of the holders found.

Pure helpers of probes/graphs.py: which nodes of a forward's output or of a backward's roots get a
marker, and, once holders are found, one holder per attaching line and whether a holder's tensors
sit inside its items.
"""
from __future__ import annotations

import collections
from typing import Any

import torch

from ..diagnosis.attribution import MARKER_KEY

MAX_OUTPUTS = 8  # output tensors marked per forward


def near_nodes(roots: list[Any], budget: int = 64) -> list[Any]:
    """Up to `budget` unmarked nodes breadth-first from `roots` (not the leaves' AccumulateGrad,
    which live as long as the parameters)."""
    found, seen, queue = [], set(), collections.deque(roots)
    while queue and len(found) < budget:
        node = queue.popleft()
        if node is None or id(node) in seen or hasattr(node, "variable"):
            continue
        seen.add(id(node))
        if MARKER_KEY not in node.metadata:
            found.append(node)
        queue.extend(nxt for nxt, _ in node.next_functions)
    return found


def nested(holder: Any) -> bool:
    """The holder's tensors sit inside its items (dicts, tuples), not directly in it."""
    value = holder.value
    if isinstance(value, torch.Tensor):
        return False
    items = list(value.values()) if isinstance(value, dict) else list(value)
    return not any(isinstance(item, torch.Tensor) for item in items[:8] + items[-8:])


def one_per_line(found: list[tuple[Any, list[torch.Tensor], Any]]) -> list[tuple[Any, list[torch.Tensor], Any]]:
    """One holder per attaching statement: `total_loss[name] += v` fills every key of the
    dict, one bug; the first name found (the shortest) carries the tensors of all."""
    by_line: dict[tuple[str, int], tuple[Any, list[torch.Tensor], Any]] = {}
    for holder, tensors, attach in found:
        first = by_line.setdefault((attach.file, attach.line), (holder, [], attach))
        first[1].extend(tensors)
    return list(by_line.values())


def output_nodes(output: Any, root: bool = False) -> list[Any]:
    """The distinct, not yet marked `grad_fn`s of a forward's output tensors (also in tuples,
    lists and dicts such as a Hugging Face ModelOutput). A root forward takes over the nodes its
    last inner module marked: its marker carries the call site."""
    nodes: list[Any] = []
    stack = [output]
    while stack and len(nodes) < MAX_OUTPUTS:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            node = item.grad_fn
            if node is not None and all(node is not n for n in nodes):
                marker = node.metadata.get(MARKER_KEY)
                if marker is None or root and marker.forward.site is None and not marker.forward.backward:
                    nodes.append(node)
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item[:MAX_OUTPUTS]))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())[:MAX_OUTPUTS]))
    return nodes
