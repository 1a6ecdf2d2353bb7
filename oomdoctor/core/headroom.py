"""How far a step's peak rises above the readings around it: learnt on watched steps, used to
estimate the peak of the windows nobody watched op by op (CPU, default mode).

A step has windows of two roles: the passes (forward and backward, ended by the optimizer step
or a backward) and the optimizer step itself. Their peaks differ in kind: a backward's peak is
activations and fresh gradients above the forward's end; Adam's is its temporaries above the
updated state. So each role keeps its own headroom and what that headroom was made of, and an
unwatched window borrows the headroom of the watched window of its role.

Two kinds of base: the highest reading inside the window ("inside"), or the last step boundary
("boundary") for windows whose inside readings were all rationed away (core/heap.py).
"""
from __future__ import annotations

KINDS = ("inside", "boundary")


class Headroom:
    def __init__(self) -> None:
        self._bytes: dict[tuple[str, str], int] = {}
        self._made_of: dict[tuple[str, str], dict[str, int]] = {}  # category -> bytes above the base
        self._range: dict[tuple[str, str], tuple[int, int]] = {}  # the least and most seen
        self._this_step: set[tuple[str, str]] = set()  # recorded since the watched step began
        self.used = "inside"  # the kind the estimates used (the rougher one, once used)

    def new_step(self) -> None:
        """A watched step begins: its first window of a role replaces what the last one left."""
        self._this_step.clear()

    def record(self, kind: str, role: str, peak: int, base: int,
               at_peak: dict[str, int], at_base: dict[str, int]) -> None:
        """A watched window of `role` peaked at `peak` above a base reading of `base` bytes
        (categories at both)."""
        key = (kind, role)
        above = max(0, peak - base)
        made_of = {c: v - at_base.get(c, 0) for c, v in at_peak.items() if v > at_base.get(c, 0)}
        if key not in self._this_step or above >= self._bytes.get(key, 0):
            self._bytes[key], self._made_of[key] = above, made_of
        self._this_step.add(key)
        low, high = self._range.get(key, (above, above))
        self._range[key] = (min(low, above), max(high, above))

    def estimate(self, kind: str, role: str) -> dict[str, int]:
        """The bytes by category to add to an unwatched window's base: those of the watched
        window of its role, or the most of any role where that role was never watched."""
        if kind == "boundary":
            self.used = kind
        key = (kind, role)
        if key not in self._bytes:
            others = [k for k in self._bytes if k[0] == kind]
            if not others:
                return {}
            key = max(others, key=self._bytes.__getitem__)
        return _split(self._bytes[key], self._made_of[key])

    @property
    def spread(self) -> tuple[int, int]:
        """The least and most headroom of one role, the role whose headroom varied most, of the
        kind the estimates used: how far they may be off. (1 << 62, 0) when none was seen."""
        ranges = [r for k, r in self._range.items() if k[0] == self.used]
        return max(ranges, key=lambda r: r[1] - r[0], default=(1 << 62, 0))


def _split(total: int, made_of: dict[str, int]) -> dict[str, int]:
    """`total` bytes shared out as `made_of` is; activations where nothing grew."""
    if not total:
        return {}
    weight = sum(made_of.values())
    if not weight:
        return {"activations": total}
    shares = {c: total * v // weight for c, v in made_of.items()}
    largest = max(made_of, key=made_of.__getitem__)
    shares[largest] += total - sum(shares.values())
    return shares
