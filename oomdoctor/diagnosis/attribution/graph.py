"""A bounded walk of the autograd graph behind tensors.

`walk_graph(roots)` visits at most `budget` nodes and returns how many it saw, the bytes of the
tensors they still save for backward (parameters excluded, each storage once; a graph that went
through backward() without `retain_graph=True` saves none) and the oomdoctor markers it met.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

MARKER_KEY = "oomdoctor"  # the key of oomdoctor's marker in `grad_fn.metadata`
NODE_BUDGET = 200_000  # graph nodes one attribution may visit


@dataclass
class GraphStats:
    nodes: int = 0
    saved_bytes: int = 0  # tensors saved for backward, parameters excluded, each storage once
    markers: list[Any] = field(default_factory=list)  # oomdoctor markers found, each once
    truncated: bool = False


_SAVED_NAMES: dict[type, tuple[str, ...]] = {}


def walk_graph(roots: list[Any], budget: int = NODE_BUDGET, want_bytes: bool = True,
               stop: Callable[[Any], bool] | None = None) -> GraphStats:
    """Walk the autograd graph from `roots` (tensors or nodes), visiting at most `budget` nodes.

    `stop(marker)` ends the walk early once it returns True.
    """
    stats = GraphStats()
    nodes: list[Any] = []  # keeps the visited nodes alive, so their ids stay unique
    seen: set[int] = set()
    storages: dict[int, int] = {}
    params: set[int] = set()
    marker_ids: set[int] = set()
    stack = [r.grad_fn if isinstance(r, torch.Tensor) else r for r in roots]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        if len(nodes) >= budget:
            stats.truncated = True
            break
        seen.add(id(node))
        nodes.append(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf (a parameter)
        if isinstance(variable, torch.Tensor):
            params.add(storage_id(variable))
        try:
            marker = node.metadata.get(MARKER_KEY)
        except Exception:
            marker = None
        if marker is not None and id(marker) not in marker_ids:
            marker_ids.add(id(marker))
            stats.markers.append(marker)
            if stop is not None and stop(marker):
                break
        if want_bytes:
            for t in _saved_tensors(node):
                storages.setdefault(storage_id(t), _storage_bytes(t))
        stack.extend(nxt for nxt, _ in getattr(node, "next_functions", ()))
    stats.nodes = len(nodes)
    stats.saved_bytes = sum(n for key, n in storages.items() if key not in params)
    return stats


def _saved_tensors(node: Any) -> Iterator[torch.Tensor]:
    cls = type(node)
    names = _SAVED_NAMES.get(cls)
    if names is None:
        names = tuple(a for a in dir(node) if a.startswith("_saved_") and not a.endswith(("_sym_sizes", "_sym_strides")))
        _SAVED_NAMES[cls] = names
    for name in names:
        # The raw saved values, never `getattr(node, name)`: that unpacks, and under saved-tensor
        # hooks an unpack is the program's business (non-reentrant checkpointing recomputes the
        # forward, and raises at backward's own unpack: it allows one).
        try:
            value = getattr(node, "_raw" + name)
        except Exception:  # freed by backward(), or not readable
            continue
        for raw in value if isinstance(value, (list, tuple)) else (value,):
            packed = _packed(raw)
            if packed is not None:
                yield packed


def _packed(raw: Any) -> torch.Tensor | None:
    """What a saved value holds without unpacking it: the tensor itself, or what a pack hook made
    of it where that is a tensor (offloaded to the CPU, say); nothing for checkpoint's holders."""
    if isinstance(raw, torch.Tensor):
        return raw
    try:
        data = raw.data
    except Exception:
        return None
    return data if isinstance(data, torch.Tensor) else None


def storage_id(t: torch.Tensor) -> int:
    try:
        return id(t.untyped_storage())
    except Exception:
        return id(t)


def _storage_bytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except Exception:
        return 0
