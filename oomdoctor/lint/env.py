"""Which keys carry an autograd graph at one point of a function's walk, in nested layers.

Contract: `Env` reads like a dict (`key in env`, `env[key]`, `env.get(key)`) and writes go to the
innermost layer. A branch, a loop body or a comprehension pushes a layer and pops it when it ends,
so entering and leaving one costs what it changed, not the size of the whole state: the walk stays
linear in the length of a loop. `join` folds popped layers back in the way paths join: a key
carries a graph if it does on any path.
"""
from __future__ import annotations


class Env:
    def __init__(self) -> None:
        self.layers: list[dict[str, bool]] = [{}]

    def __contains__(self, key: str) -> bool:
        return any(key in layer for layer in self.layers)

    def __getitem__(self, key: str) -> bool:
        for layer in reversed(self.layers):
            if key in layer:
                return layer[key]
        raise KeyError(key)

    def get(self, key: str, default: bool | None = None) -> bool | None:
        return self[key] if key in self else default

    def __setitem__(self, key: str, graph: bool) -> None:
        self.layers[-1][key] = graph

    def push(self) -> None:
        self.layers.append({})

    def pop(self) -> dict[str, bool]:
        """The innermost layer, removed: what changed since its `push`."""
        return self.layers.pop()

    def join(self, paths: list[dict[str, bool]], fallthrough: bool = False) -> None:
        """Merge popped layers, one per path through a block, into the current state. With
        `fallthrough`, the block may also have been skipped (a loop that ran no iteration)."""
        for key in {k for changes in paths for k in changes}:
            known = key in self
            values = [changes[key] if key in changes else self[key] for changes in paths
                      if key in changes or known]
            if fallthrough and known:
                values.append(self[key])
            self[key] = any(values)
