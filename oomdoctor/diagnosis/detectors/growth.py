"""`memory-growth`: memory left at the end of each step rises step after step, no graph involved.

Pure, on the `survivors` event of probes/growth.py and `timeline.series`. Each kind of evidence
is fitted with Theil-Sen (the median of the pairwise slopes: robust to spikes and odd steps),
and growth must go on in the later half of the points: memory that rises and then plateaus
(warm-up, lazily created optimizer state, a cache that fills up) is not growth.
- Exact evidence, preferred: the holders' own bytes, measured after each was named (any mode),
  and `timeline.series` of end-of-step bytes when every step is exact (CUDA allocator,
  `--exact`), after the warm-up steps. When one of them is there, it decides. Their floor (the
  lowest bytes from each point on) must rise too: a list emptied every epoch rises within each
  epoch and falls back; growth in one jump an epoch raises the floor at every jump.
- Sampled CPU runs otherwise: one line's bytes growing from exact step to exact step (a tensor
  re-allocated bigger), or survivors: storages created at exact steps and alive two steps or
  more later, from at least three steps, half of them or more and one of the latest two. A leak
  leaves them step after step; warm-up only at the first steps.
Each growing holder is a finding at the statement that stores into it (holders stored by one
statement, one finding); one whose tensors carry autograd graphs is a `retained-graph`, told as
the graph probe tells one. A retained-graph finding that explains the growth takes precedence.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ...report.model import Finding, Location, Remedy
from ...sizes import format_bytes
from ...core.timeline import Timeline
from . import retained_graph

WARMUP = 3  # steps left out of the series: optimizer state, caches, first batches
MIN_RATE = 1024  # bytes per step worth reporting
MIN_TOTAL = 256 * 1024  # growth over the run worth reporting
SHORT = 16  # holder measurements below which the holder must rise at nearly every one


@dataclass
class Fit:
    slope: float  # bytes per step
    late: float  # the slope over the later half of the points
    span: int  # steps between the first and last point
    last: int  # bytes at the last point
    steady: float  # the share of consecutive points that rose

    def rising(self) -> bool:
        return self.slope > 0 and self.late >= 0.25 * self.slope

    def grows(self, total: float) -> bool:
        return self.rising() and self.slope >= MIN_RATE and total >= MIN_TOTAL


def detect(timeline: Timeline) -> list[Finding]:
    event = next((e for e in timeline.events if e["kind"] == "survivors"), None)
    if event is None:
        return []
    holders = _holders(event)
    measured = [(h, fit([(p[0], p[1]) for p in h.get("holder_series", [])], min_points=3, min_span=2))
                for h in holders]
    series = fit([p for p in timeline.series if p[0] >= WARMUP]) if event.get("all_exact") else None
    growing = [(h, f.slope) for h, f in measured if f is not None and _holder_grows(h, f)]
    if growing:
        return _by_statement(timeline, event, growing)
    if any(f is not None for _, f in measured) or series is not None:
        if series is None or not series.grows(series.slope * series.span) or not _floor_rises(
                [p for p in timeline.series if p[0] >= WARMUP]):
            return []
        rate, record = series.slope, None
    else:
        site = best_site(event)
        rate = site.slope if site is not None and site.grows(site.slope * site.span) else survivor_rate(event)
        if not rate:
            return []
        record = {}  # the event's own holder fields, if any
    if _explained_by_retained_graph(timeline, rate):
        return []
    return [_finding(timeline, event, rate, record)]


def _holders(event: dict) -> list[dict]:
    """Every holder the probe named and measured (the first is also the event's own)."""
    if event.get("holders"):
        return event["holders"]
    if event.get("holder_series"):
        return [{k: event.get(k) for k in ("holder", "holder_series", "allocation", "location", "before",
                                           "after", "method")}]
    return []


def _holder_grows(holder: dict, f: Fit) -> bool:
    """A holder named late in a run has a short series: it must rise at nearly every point (a
    pool that fills slowly and stops is not growth). Its lowest bytes from each point on must
    rise too: a list emptied every epoch rises within each epoch, but falls back."""
    series = holder.get("holder_series", [])
    return (f.grows(f.last) and (len(series) >= SHORT or f.steady >= 0.75) and not _fixed_length(holder)
            and _floor_rises([(p[0], p[1]) for p in series]))


def _by_statement(timeline: Timeline, event: dict, growing: list[tuple[dict, float]]) -> list[Finding]:
    """One finding per statement: holders stored by the same line (the same list on two layers)
    are one bug, their rates summed."""
    findings: dict[tuple, tuple[dict, float]] = {}
    for holder, rate in growing:
        where = holder.get("location") or holder.get("allocation") or _top_site(event) or {}
        key = (where.get("file"), where.get("line"))
        first, total = findings.get(key, (holder, 0.0))
        findings[key] = (first, total + rate)
    out = []
    for holder, rate in findings.values():
        if _explained_by_retained_graph(timeline, rate, holder.get("location")):
            continue
        out.append(_graph_finding(timeline, holder, rate) if holder.get("graph") else
                   _finding(timeline, event, rate, holder))
    return out


def _floor_rises(points: list[tuple[int, int]]) -> bool:
    """The lowest bytes from each point on (the floor a leak raises and an emptied list returns
    to) rise over the later half of the points too. Spikes above it do not count, nor does
    growth in one jump every few steps: the floor rises at each jump."""
    floor, low = [], None
    for step, nbytes in reversed(points):
        low = nbytes if low is None else min(low, nbytes)
        floor.append((step, low))
    f = fit(floor[::-1], min_points=3, min_span=2)
    return f is not None and f.rising()


def fit(points: list[tuple[int, int]], min_points: int = 6, min_span: int = 8) -> Fit | None:
    if len(points) < min_points or points[-1][0] - points[0][0] < min_span:
        return None
    rose = sum(1 for a, b in zip(points, points[1:]) if b[1] > a[1])
    return Fit(theil_sen(points), theil_sen(points[len(points) // 2:]), points[-1][0] - points[0][0], points[-1][1],
               rose / (len(points) - 1))


def theil_sen(points: list[tuple[int, int]]) -> float:
    slopes = [(b[1] - a[1]) / (b[0] - a[0]) for i, a in enumerate(points) for b in points[i + 1:] if b[0] != a[0]]
    return statistics.median(slopes) if slopes else 0.0


def best_site(event: dict) -> Fit | None:
    fits = [fit([(p[0], p[1]) for p in s["points"] if p[0] >= WARMUP], min_points=4, min_span=8)
            for s in event.get("site_series", [])]
    fits = [f for f in fits if f is not None]
    return max(fits, key=lambda f: f.slope) if fits else None


def survivor_rate(event: dict) -> float | None:
    """Bytes left behind per step: survivors from at least three exact steps, half of them or
    more, one of the latest two included."""
    by_step = event.get("by_step") or []
    with_survivors = [b for _, b in by_step if b > 0]
    if len(with_survivors) < 3 or 2 * len(with_survivors) < len(by_step):
        return None
    if not any(b > 0 for _, b in by_step[-2:]):
        return None
    rate = statistics.median(with_survivors)
    if rate < MIN_RATE or rate * event.get("scan_step", 0) < MIN_TOTAL:
        return None
    return float(rate)


def _fixed_length(event: dict) -> bool:
    """The holder is a container whose length stopped changing over the later half of its
    measurements: its items are replaced (a pool, a ring buffer), so it is bounded."""
    lengths = [p[3] for p in event.get("holder_series", []) if len(p) > 3 and p[3] is not None]
    return len(lengths) >= 4 and len(set(lengths[len(lengths) // 2:])) == 1


def _explained_by_retained_graph(timeline: Timeline, rate: float, location: dict | None = None) -> bool:
    """A retained graph the graph probe found explains the growth (or, for a holder, was found
    at its statement)."""
    return any(e["kind"] == "retained-graph" and not e.get("provisional")
               and (e.get("bytes_per_step", 0) >= 0.5 * rate or location is not None and _same_line(
                   e.get("location"), location)) for e in timeline.events)


def _same_line(a: dict | None, b: dict | None) -> bool:
    return bool(a and b) and (a.get("file"), a.get("line")) == (b.get("file"), b.get("line"))


def _graph_finding(timeline: Timeline, holder: dict, rate: float) -> Finding:
    """A growing holder whose tensors carry their autograd graphs keeps every step's graph: a
    retained graph, told as the graph probe tells one (which saw none: inner modules' outputs,
    a hook's list, are marked on sampled steps only)."""
    series = holder.get("holder_series") or []
    graph = holder["graph"]
    steps = timeline.steps()
    last = steps[-1].index if steps else (series[-1][0] if series else 0)
    first = series[0][0] if series else last
    event = {"holder": holder.get("holder"), "location": holder.get("location") or holder.get("allocation"),
             "before": holder.get("before"), "after": holder.get("after"), "method": holder.get("method"),
             "container": True, "clock": "step", "steps_alive": max(1, last - first + 1),
             "bytes": series[-1][1] if series else 0, "bytes_per_step": int(rate),
             # Steps ran backward() through what a training step kept (a hook's list of a layer's
             # outputs): what is left of each graph is its nodes. The graph probe tells apart
             # graphs no backward reached (evaluation with grad on): it marks every root forward.
             "backward": True, "nodes": graph.get("nodes", 0),
             "forward_site": None, "provisional": False, "detected_at": first}
    finding = retained_graph._finding(event)  # told in its words; its event, from the growth probe
    finding.evidence.update(holder_series=series, source="growth")
    return finding


def _finding(timeline: Timeline, event: dict, rate: float, record: dict | None) -> Finding:
    """`record`: the holder that grows (a dict of the probe's holder fields; {} for the event's
    own, if any) or None when no holder explains the growth."""
    named = record is not None
    event = {**event, **(record or {})}
    steps = timeline.steps()
    last = steps[-1] if steps else None
    capacity, source = event.get("capacity"), event.get("capacity_source")
    projected = None
    if capacity and last is not None:
        projected = last.index + max(0, math.ceil((capacity - last.peak_bytes) / rate))
    device = {"ram": "the machine's RAM", "--capacity": "the capacity you gave"}.get(source, "the device")
    holder = event.get("holder") if named else None
    allocation = event.get("allocation") if named else None
    allocation = allocation or _top_site(event)
    detail = f"Memory left at the end of each step grows by about {format_bytes(int(rate))} per step"
    if last is not None and steps[0].index != last.index:
        detail += f" over steps {steps[0].index}..{last.index}"
    detail += "."
    if holder:
        detail += f" What grows is kept in `{holder}`"
        if allocation:
            detail += f"; it was allocated at line {allocation['line']} (`{allocation.get('code') or allocation['function']}`)"
        detail += "."
    elif allocation:
        detail += f" The growing tensors are allocated at line {allocation['line']}."
    if projected is not None:
        detail += f" At this rate {device} ({format_bytes(capacity)}) runs out near step {projected}."
    remedies = []
    if named and event.get("before") and event.get("after"):
        title = ("Store a Python number (`.item()`), not the tensor" if event.get("method") == ".item()" else
                 "Keep it in host memory (`.cpu()`): it still grows, but off the device")
        remedies.append(Remedy(title, before=event["before"], after=event["after"]))
    remedies.append(Remedy("Keep only what you need after the step: a number (`.item()`), a bounded window "
                           "(`collections.deque(maxlen=N)`), a running aggregate, or write it to disk"))
    where = (event.get("location") if named else None) or allocation
    total = int(rate * ((last.index + 1) if last is not None else 1))
    return Finding(
        kind="memory-growth",
        severity="warning",
        title=f"Memory grows by {format_bytes(int(rate))} per step"
              + (f"; out of memory near step {projected}" if projected is not None else ""),
        detail=detail,
        location=Location(**where) if where else None,
        bytes=total,
        remedy=f"Stop keeping {'`' + holder + '`' if holder else 'these tensors'} across steps, or bound it.",
        remedies=remedies,
        evidence={"bytes_per_step": int(rate), "projected_oom_step": projected, "capacity_bytes": capacity,
                  "capacity_source": source, "holder": holder, "allocation": allocation,
                  "holder_series": event.get("holder_series"), "by_step": event.get("by_step")},
    )


def _top_site(event: dict) -> dict | None:
    """Without a holder: the line with the most survivors, else the fastest growing line."""
    sites = event.get("sites") or []
    if sites:
        return {k: sites[0][k] for k in ("file", "line", "function", "code")}
    growing = [(theil_sen([(p[0], p[1]) for p in s["points"]]), s) for s in event.get("site_series", [])]
    growing = [g for g in growing if g[0] > 0]
    if growing:
        s = max(growing, key=lambda g: g[0])[1]
        return {k: s[k] for k in ("file", "line", "function", "code")}
    return None
