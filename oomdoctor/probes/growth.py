"""Survivors: what the steps created that is still alive steps later, and what holds it.

The ledger stamps each storage with the step that created it (`Entry.step`); this probe also
turns on `ledger.record_sites`, so that storages note the user's line that created them. Both
cost only on the steps where the ledger sees every op (sampled steps, `--exact`, `--capacity`),
and nothing on CUDA, where the allocator gives exact end-of-step bytes and the ledger sees no
single op.

At the end of every exact step S, and two steps later, the probe scans the ledger's storages
other than parameters and optimizer state (created once):
- by creation step: the bytes created at each exact step k (1 <= k <= S - 2) still alive at S;
  a leak leaves survivors from step after step, a warm-up cache only from the first ones;
- by line (exact steps only): the bytes alive per line, so a tensor re-allocated bigger at
  every step (a history kept with `torch.cat`) shows as one line growing from scan to scan.
When survivors come from three steps or more, one of the latest two included, or a line grew
at three scans in a row, the user's frames are searched once for what holds those storages and
for the statement that stores into it (attribution.py).

The per-op view sees nothing of the steps it skips, nor of what runs between steps (an evaluation
under no_grad): growth made there leaves no survivors. So on every step whose end bytes are not
the ledger's (CUDA: the allocator's; CPU steps the per-op view skipped: the calibrated heap), end
bytes that rose over three equal spans in a row (`rose_by_spans`: 2, 4, 8... steps each, so that
growth in one jump an epoch is seen as well as growth at every step) start a search by size:
every holder of tensors in the user's frames is sized, again once the end bytes rose further
(at least `APART` steps later), and each holder that grew by a good share of the rise is named
(a metric's two list states grow together: two holders, two statements). From then on each
named holder is found again on the stack by its frame's code and access path (no reference to
the user's objects is kept) and its bytes are measured exactly, a few dozen times over the run:
on sampled CPU runs that is the true rate, which the ledger alone underestimates (steps between
samples go unseen).

One event `survivors`, updated in place: all_exact (every step's end bytes are exact:
`timeline.series` can be fitted), capacity, capacity_source ("--capacity" | "device" | "ram"),
scans, scan_step, by_step ([[k, bytes]] for the exact steps k in [1, S-2]), sites ([{file,
line, function, code, bytes, steps}], survivors by line), site_series ([{file, line, function,
code, points: [[S, bytes]]}]), holder, holder_series ([[step, bytes, tensors, length]]; length None for a tensor), allocation
(the line that created the holder's storages), location, before, after, method (the statement
that stores into the holder, and the same statement fixed): the first holder named; holders
([{holder, holder_series, allocation, location, before, after, method}], every holder named,
the first included).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..diagnosis import attribution

# Gradients too: storages created during backward are filed under gradients, and one the user
# keeps from step to step (a hook that stores them) is a leak like any other; real `.grad`
# tensors are created once (or freed each step), so they leave no survivors step after step.
GROWING = ("activations", "other", "gradients")
KEEP = 64  # creation steps, scans and holder measurements kept per list
TOP_SITES = 8
MAX_ATTRIBUTIONS = 3
APART = 4  # steps at least between the two sizings of the user's holders
SPANS = 3  # end bytes rising over this many equal spans in a row start a search by size
MIN_RISE = 1024  # bytes per step a span must rise by (less is never reported: detectors/growth.py)
MAX_SEARCHES = 3
MAX_HOLDERS = 4  # holders named in all
SHARE = 0.1  # a holder named by size grew by at least this share of the end bytes' rise
GRAPH_BUDGET = 20_000  # autograd nodes walked behind a named holder's tensors


class GrowthProbe:
    def __init__(self) -> None:
        self.session: Any = None
        self.event: dict[str, Any] = {}
        self._due: set[int] = set()
        self._exact: list[int] = []  # exact step indices >= 1, latest KEEP
        self._site_points: dict[tuple, list[list[int]]] = {}
        self._attributions = 0
        self._next_attribution = 0
        self._named: list[_Named] = []  # the holders named, measured from then on
        self._searches = 0
        self._next_search = 0
        # The first sizing of a search by size: (step, end bytes, span in steps, the span's rise,
        # holder sizes).
        self._sized: tuple[int, int, int, int, dict[tuple, int]] | None = None

    # -- probe protocol ------------------------------------------------------------------------
    def start(self, session: Any) -> None:
        self.session = session
        self._ledger_ops = session.device.type != "cuda"  # on CUDA the ledger sees no single op
        if self._ledger_ops:
            session.ledger.record_sites = True
        if session.capacity is not None:
            capacity, source = session.capacity, "--capacity"
        elif session.device.type == "cuda":
            capacity, source = session.timeline.capacity, "device"
        else:
            capacity, source = _ram_bytes(), "ram"
        self.event = attribution.new_event(session.timeline, "survivors",
                                           all_exact=bool(session.exact) or not self._ledger_ops, capacity=capacity,
                                           capacity_source=source, scans=0, holder=None, holder_series=[],
                                           location=None)

    def stop(self) -> None:
        pass

    def forward_start(self, session: Any, module: torch.nn.Module) -> None:
        pass

    def forward_end(self, session: Any, module: torch.nn.Module, output: Any) -> None:
        pass

    def step_end(self, session: Any, step: Any) -> None:
        try:
            self._step_end(session, step)
        except Exception as exc:  # our failure must not end the user's step
            session._warn(f"internal error in the growth probe: {exc!r}")

    def _step_end(self, session: Any, step: Any) -> None:
        index = step.index
        if self.event["capacity"] is None and session.timeline.capacity is not None:
            self.event["capacity"] = session.timeline.capacity  # CUDA: known once installed
        for named in self._named:
            if index - named.measured_at >= named.every:
                self._measure(named, index)
        if not self._ledger_ops or not step.exact:
            # End bytes that are no ledger's: the allocator's (CUDA) or the heap's (a CPU step the
            # per-op view skipped, and what ran since the last step). Growth made there leaves no
            # survivors the ledger could see.
            self._search_by_size(index, step.end_bytes)
        if not self._ledger_ops:
            return
        if step.exact and index >= 1:
            self._exact = (self._exact + [index])[-KEEP:]
        everything = self.event["all_exact"]
        due = index in self._due or (step.exact and (not everything or index < 16 or index % 4 == 0))
        if step.exact and not everything:
            self._due.add(index + 2)  # the step's survivors are old two steps later
        self._due.discard(index)
        if due:
            self._scan(index, by_line=step.exact)

    # -- scans ---------------------------------------------------------------------------------
    def _scan(self, now: int, by_line: bool) -> None:
        by_step: dict[int, int] = {}
        old_by_site: dict[tuple, list] = {}
        alive_by_site: dict[tuple, int] = {}
        for entry in self.session.ledger.live():
            if entry.category not in GROWING or entry.site is None:
                continue
            site = (entry.site.file, entry.site.line, entry.site.function)
            alive_by_site[site] = alive_by_site.get(site, 0) + entry.nbytes
            if 1 <= entry.step <= now - 2:
                by_step[entry.step] = by_step.get(entry.step, 0) + entry.nbytes
                record = old_by_site.setdefault(site, [0, set()])
                record[0] += entry.nbytes
                record[1].add(entry.step)
        top = sorted(alive_by_site.items(), key=lambda kv: kv[1], reverse=True)[:TOP_SITES]
        if by_line:  # at an exact step's end the ledger saw everything the step created
            for site, nbytes in top:
                points = self._site_points.setdefault(site, [])
                points.append([now, nbytes])
                del points[:-KEEP]
        exact = [k for k in self._exact if k <= now - 2]
        sites = sorted(old_by_site.items(), key=lambda kv: kv[1][0], reverse=True)[:TOP_SITES]
        self.event.update(
            scans=self.event["scans"] + 1,
            scan_step=now,
            by_step=[[k, by_step.get(k, 0)] for k in exact],
            sites=[{**_site_dict(site), "bytes": b, "steps": len(steps)} for site, (b, steps) in sites],
            site_series=[{**_site_dict(site), "points": points} for site, points in self._site_points.items()
                         if len(points) > 1][-2 * TOP_SITES:],
        )
        target = self._growing_site(exact, by_step, sites, top)
        if target is not None and now >= self._next_attribution and self._attributions < MAX_ATTRIBUTIONS:
            self._attribute(target, now)

    def _growing_site(self, exact: list[int], by_step: dict[int, int], sites: list, top: list) -> tuple | None:
        """The line to attribute: the largest survivors' line when survivors come from the
        latest two exact steps, or from three (one of the latest two included), or a line that
        grew at the last three exact steps. Early on purpose (the warm-up steps are enough):
        naming the holder only starts measuring it, and its own bytes decide."""
        with_survivors = [k for k in exact if by_step.get(k, 0) > 0]
        latest = set(exact[-2:]) & set(with_survivors)
        if sites and (len(latest) == 2 or len(with_survivors) >= 3 and latest):
            return sites[0][0]
        for site, _ in top:
            points = self._site_points.get(site, [])[-3:]
            if len(points) == 3 and all(b[1] > a[1] for a, b in zip(points, points[1:])):
                return site
        return None

    def _attribute(self, site: tuple, now: int) -> None:
        """Name what holds the growing line's storages and find where it stores them (expensive)."""
        self._attributions += 1
        self._next_attribution = now + max(8, now)
        ids = {key for key, e in list(self.session.ledger.entries.items())
               if e.site is not None and (e.site.file, e.site.line, e.site.function) == site}
        holders = attribution.find_holders(attribution.user_frames(), lambda t: _storage_id(t) in ids)
        holders = [h for h in holders if not self._is_named(h)]
        if not holders or len(self._named) >= MAX_HOLDERS:
            return
        self._name([max(holders, key=lambda h: attribution.held_bytes(h.value)[0])], site, now)

    def _is_named(self, holder: Any) -> bool:
        return any(holder.locator in named.locators or holder.name == named.name for named in self._named)

    def _name(self, holders: list[Any], site: tuple | None, now: int) -> None:
        """Record a holder (the instances of one, under one name: each hook object's list) and the
        statement that stores into it; measure it from now on."""
        holder = holders[0]
        graph = _graph(holders)
        scalar = all(t.numel() == 1 for t in holder.tensors)
        method = ".item()" if scalar else (".cpu()" if self.session.device.type != "cpu" else None)
        # Tensors that carry graphs: `.detach()` at the store frees every step's graph.
        method = method or (".detach()" if graph else None)
        attach = attribution.attach_statement(holder, method or ".detach()")
        record: dict[str, Any] = {"holder": holder.name, "allocation": _site_dict(site) if site else None,
                                  "location": None, "before": None, "after": None, "method": None,
                                  "holder_series": [], "graph": graph}
        if attach is not None:
            record.update(location={"file": attach.file, "line": attach.line, "function": attach.function,
                                    "code": attach.code},
                          before=attach.before if method else None, after=attach.after if method else None,
                          method=attach.method if method else None)
        if not self._named:  # the first holder named is the event's own too
            self.event.update(holder=record["holder"], allocation=record["allocation"])
            if attach is not None:
                self.event.update({k: record[k] for k in ("location", "before", "after", "method")})
            record["holder_series"] = self.event["holder_series"]
        self.event.setdefault("holders", []).append(record)
        named = _Named(holder.name, [h.locator for h in holders], record["holder_series"])
        self._named.append(named)
        self._measure(named, now)

    def _search_by_size(self, index: int, end: int) -> None:
        """Once end bytes rose over SPANS equal spans in a row, size every holder of tensors in
        the user's frames; once they rose further, size them again and name those that grew."""
        if self._searches >= MAX_SEARCHES or len(self._named) >= MAX_HOLDERS or index < self._next_search:
            return
        if self._sized is None:
            noise = getattr(getattr(self.session.meter, "heap", None), "noise", 0) if self._ledger_ops else 0
            rise = rose_by_spans(self.session.timeline.series, noise)
            if rise is not None and not self._explained(index, *rise):
                span, by = rise
                sizes = {k: n for k, (_, n) in self._holder_sizes().items()}
                self._sized = (index, end, span, by, sizes)
            return
        first, first_end, span, by, before = self._sized
        # Wait for the end bytes to rise again by half the span's rise: growth in one jump an
        # epoch is seen between two sizings that straddle a jump. Past SPANS spans, size anyway.
        waited = index - first
        if waited < APART or (end - first_end < by // 2 and waited < SPANS * span):
            return
        self._sized = None
        self._searches += 1
        self._next_search = index + max(8, index)
        # Instances of one holder (the same list on each of a layer's hooks, a metric's state on
        # two metrics) grow together: they are one statement, named once, their growth summed.
        groups: dict[str, list[tuple[int, Any]]] = {}
        for k, (holder, n) in self._holder_sizes().items():
            growth = n - before.get(k, 0)
            if growth > 0 and not self._is_named(holder):
                groups.setdefault(holder.name, []).append((growth, holder))
        ranked = sorted(groups.values(), key=lambda g: sum(n for n, _ in g), reverse=True)
        rise = end - first_end
        for group in ranked[:MAX_HOLDERS - len(self._named)]:
            # Growth spread over many holders (hooks added again and again) leaves each a small
            # share: a tenth of the rise is worth measuring; the detector judges the bytes.
            if sum(n for n, _ in group) >= SHARE * rise:
                self._name([h for _, h in sorted(group, key=lambda g: g[0], reverse=True)], None, index)

    def _explained(self, index: int, span: int, by: int) -> bool:
        """The holders named already grew by half the end bytes' rise over the last span: no
        other holder to look for."""
        grown = 0
        for named in self._named:
            before = [p[1] for p in named.series if p[0] <= index - span]
            if before and named.series:
                grown += named.series[-1][1] - before[-1]
        return grown >= by // 2 > 0 and bool(self._named)

    def _holder_sizes(self) -> dict[tuple, tuple[Any, int]]:
        kind = self.session.device.type
        holders = attribution.find_holders(attribution.user_frames(), lambda t: t.device.type == kind)
        return {h.locator: (h, attribution.held_bytes(h.value)[0]) for h in holders}

    def _measure(self, named: "_Named", index: int) -> None:
        """A named holder's exact bytes now (its instances together), found again from the stack."""
        series = named.series
        if series and series[-1][0] == index:
            return
        named.measured_at = index
        values = [v for v in (attribution.resolve(locator) for locator in named.locators) if v is not None]
        if not values:
            return
        nbytes, count = attribution.held_bytes(*values)
        # A container's length too: one that stopped lengthening replaces its items (bounded). A
        # tensor's element count: one that keeps its elements while its bytes grow only views a
        # storage remade bigger elsewhere (`value = thresholds[i]` of a growing `torch.cat`).
        lengths = [t.numel() if isinstance(t, torch.Tensor) else _length(t) for t in values]
        length = None if any(n is None for n in lengths) else sum(lengths)
        series.append([index, nbytes, count, length])
        if len(series) >= KEEP:  # thin out: every other point, measure half as often
            series[:] = series[::2]
            named.every *= 2


@dataclass
class _Named:
    """A holder named: its instances (how to find each again) and its measurements (the event's list)."""

    name: str
    locators: list[tuple]
    series: list = field(default_factory=list)
    every: int = 1
    measured_at: int = -1


def _graph(holders: list[Any]) -> dict[str, int] | None:
    """The autograd graph behind the holders' tensors, when they carry one: a holder that grows
    with graphs attached keeps every step's graph (a retained graph, whatever else it keeps)."""
    roots = [t for h in holders for t in h.tensors if t.grad_fn is not None]
    if not roots:
        return None
    # Nodes only: reading what a node saved runs the unpack hooks of saved-tensor hooks
    # (activation checkpointing recomputes, offloading copies back).
    stats = attribution.walk_graph(roots, budget=GRAPH_BUDGET, want_bytes=False)
    return {"tensors": len(roots), "nodes": stats.nodes}


def rose_by_spans(points: list[tuple[int, int]], noise: int = 0) -> tuple[int, int] | None:
    """(span in steps, rise over the last span) when the latest points rose over SPANS equal
    spans in a row, each by more than `noise` and MIN_RISE bytes a step; spans of 2, 4, 8...
    points, so that growth in one jump every few steps (an epoch's evaluation) is seen once a
    span holds a jump. A list emptied every epoch rises within one too: only starting a search,
    that is cheap; the holders' own bytes decide (detectors/growth.py)."""
    n, gap = len(points), 2
    while SPANS * gap < n:
        marks = [points[n - 1 - k * gap] for k in range(SPANS, -1, -1)]
        if all(b[1] - a[1] > max(noise, MIN_RISE * (b[0] - a[0])) for a, b in zip(marks, marks[1:])):
            return marks[-1][0] - marks[-2][0], marks[-1][1] - marks[-2][1]
        gap *= 2
    return None


def _site_dict(site: tuple) -> dict[str, Any]:
    file, line, function = site
    return {"file": file, "line": line, "function": function, "code": attribution.source_line(file, line)}


def _length(value: Any) -> int | None:
    try:
        return len(value)
    except TypeError:
        return None


def _storage_id(t: torch.Tensor) -> int:
    try:
        return id(t.untyped_storage())
    except Exception:
        return 0


def _ram_bytes() -> int | None:
    """The machine's memory: what a CPU run grows into."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
