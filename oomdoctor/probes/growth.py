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
for the statement that stores into it (attribution.py). Without per-op sites (CUDA), end bytes
rising `RISING` steps in a row start the search instead: every holder of device tensors in the
user's frames is sized twice, `APART` steps apart, and the one that grew is named. From then on the holder is found again
on the stack by its frame's code and access path (no reference to the user's objects is kept)
and its bytes are measured exactly, a few dozen times over the run: on sampled CPU runs that is
the true rate, which the ledger alone underestimates (steps between samples go unseen).

One event `survivors`, updated in place: all_exact (every step's end bytes are exact:
`timeline.series` can be fitted), capacity, capacity_source ("--capacity" | "device" | "ram"),
scans, scan_step, by_step ([[k, bytes]] for the exact steps k in [1, S-2]), sites ([{file,
line, function, code, bytes, steps}], survivors by line), site_series ([{file, line, function,
code, points: [[S, bytes]]}]), holder, holder_series ([[step, bytes, tensors, length]]; length None for a tensor), allocation
(the line that created the holder's storages), location, before, after, method (the statement
that stores into the holder, and the same statement fixed).
"""
from __future__ import annotations

import os
from collections import deque
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
RISING = 6  # without per-op sites (CUDA): end bytes rising this many steps in a row start a search
APART = 4  # steps between the two sizings of the user's holders


class GrowthProbe:
    def __init__(self) -> None:
        self.session: Any = None
        self.event: dict[str, Any] = {}
        self._due: set[int] = set()
        self._exact: list[int] = []  # exact step indices >= 1, latest KEEP
        self._site_points: dict[tuple, list[list[int]]] = {}
        self._attributions = 0
        self._next_attribution = 0
        self._holder: tuple[Any, tuple] | None = None  # the holder's locator (attribution.resolve)
        self._measured_at = -1
        self._measure_every = 1
        self._ends: deque[int] = deque(maxlen=RISING + 1)
        self._sized: tuple[int, int, dict[tuple, int]] | None = None  # (step, end bytes, holder sizes)

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
        if self._holder is not None and index - self._measured_at >= self._measure_every:
            self._measure(index)
        if not self._ledger_ops:
            self._search_by_size(index, step.end_bytes)
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
        if not holders:
            return
        self._name(max(holders, key=lambda h: attribution.held_bytes(h.value)[0]), site, now)

    def _name(self, holder: Any, site: tuple | None, now: int) -> None:
        """Record the holder and the statement that stores into it; measure it from now on."""
        scalar = all(t.numel() == 1 for t in holder.tensors)
        method = ".item()" if scalar else (".cpu()" if self.session.device.type != "cpu" else None)
        attach = attribution.attach_statement(holder, method or ".detach()")
        self._holder = holder.locator
        self.event.update(holder=holder.name, allocation=_site_dict(site) if site else None)
        if attach is not None:
            self.event.update(location={"file": attach.file, "line": attach.line, "function": attach.function,
                                        "code": attach.code},
                              before=attach.before if method else None, after=attach.after if method else None,
                              method=attach.method if method else None)
        self._measure(now)

    def _search_by_size(self, index: int, end: int) -> None:
        """Without per-op sites: once end bytes rose RISING steps in a row, size every holder of
        device tensors in the user's frames, again APART steps later, and name the one that grew."""
        self._ends.append(end)
        if self._holder is not None or self._attributions >= MAX_ATTRIBUTIONS or index < self._next_attribution:
            return
        if self._sized is None:
            ends = list(self._ends)
            if len(ends) > RISING and all(b > a for a, b in zip(ends, ends[1:])):
                self._sized = (index, end, {k: n for k, (_, n) in self._holder_sizes().items()})
            return
        first, first_end, before = self._sized
        if index - first < APART:
            return
        self._sized = None
        self._attributions += 1
        self._next_attribution = index + max(8, index)
        grown = [(n - before.get(k, 0), holder) for k, (holder, n) in self._holder_sizes().items()]
        growth, holder = max(grown, key=lambda g: g[0], default=(0, None))
        if holder is not None and growth > 0 and growth >= 0.25 * (end - first_end):
            self._name(holder, None, index)

    def _holder_sizes(self) -> dict[tuple, tuple[Any, int]]:
        kind = self.session.device.type
        holders = attribution.find_holders(attribution.user_frames(), lambda t: t.device.type == kind)
        return {h.locator: (h, attribution.held_bytes(h.value)[0]) for h in holders}

    def _measure(self, index: int) -> None:
        """The holder's exact bytes now, found again from the stack."""
        series = self.event["holder_series"]
        if series and series[-1][0] == index:
            return
        self._measured_at = index
        value = attribution.resolve(self._holder)
        if value is None:
            return
        nbytes, count = attribution.held_bytes(value)
        # A container's length too: one that stopped lengthening replaces its items (bounded).
        series.append([index, nbytes, count, None if isinstance(value, torch.Tensor) else _length(value)])
        if len(series) >= KEEP:  # thin out: every other point, measure half as often
            series[:] = series[::2]
            self._measure_every *= 2


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
