"""A rank's report through the job's store, and rank 0 gathering them, bounded in time.

Keys, under `oomdoctor/<run id>/<restart>/` (a job restarted by torchrun starts afresh):
- `alive/<rank>`: the rank's heartbeat counter (`store.Heartbeat`), bumped every second from its start;
- `report/<rank>`: the rank's report as JSON, set when its script ended, however it ended;
- `finished`: the ranks that sent theirs, appended one by one so that one read says which.

Rank 0 waits for each other rank until the first of: its report arrives; its counter stood still
for STALE_S (killed, crashed, out of host memory: named so); WAIT_S passed since rank 0 ended (a rank
alive that never finishes, e.g. waiting in a collective for a dead peer).
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

from ..report.model import Report

STALE_S = 10.0  # ten missed beats: a rank this quiet is gone
WAIT_S = 120.0  # the longest rank 0 waits for a rank that is alive
POLL_S = 0.25


def publish(store: Any, prefix: str, rank: int, report: Report) -> None:
    store.set(f"{prefix}report/{rank}", json.dumps(report.to_dict()))
    store.append(f"{prefix}finished", f"{rank} ")  # after the report: a reader finds it there


def gather(store: Any, prefix: str, world_size: int, wait_s: float = WAIT_S,
           stale_s: float = STALE_S) -> tuple[list[Report], dict[int, str]]:
    """Rank 0: the other ranks' reports, and why each missing one is missing."""
    start = time.monotonic()
    finished_key = f"{prefix}finished"
    store.append(finished_key, "")  # exists from now on: `get` would block on a missing key
    beat = {r: f"{prefix}alive/{r}" for r in range(1, world_size)}
    last = {r: (store.add(key, 0), start) for r, key in beat.items()}  # (counter, when it last moved)
    reports: dict[int, Report] = {}
    missing: dict[int, str] = {}
    told = False
    while len(reports) + len(missing) < world_size - 1:
        pending = sorted(set(beat) - set(reports) - set(missing))
        # Beats first, then `finished`: a rank sends its report before it stops beating, so a rank
        # that looks quiet here and is not in `finished` below really stopped before sending.
        now = time.monotonic()
        for r, value in zip(pending, store.multi_get([beat[r] for r in pending])):
            if int(value) != last[r][0]:
                last[r] = (int(value), now)
        done = {int(r) for r in store.get(finished_key).split()}
        for r in pending:
            if r in done:
                try:
                    reports[r] = _read(store, f"{prefix}report/{r}")
                except Exception as exc:  # noqa: BLE001 - one rank's bad report must not lose the others
                    missing[r] = f"its report could not be read ({type(exc).__name__}: {str(exc)[:120]})"
            elif now - last[r][1] >= stale_s:
                missing[r] = _silent(last[r][0], stale_s)
            elif now - start >= wait_s:
                missing[r] = f"still running {wait_s:.0f} s after rank 0 ended"
        waiting = [r for r in pending if r not in reports and r not in missing]
        if waiting and not told and now - start >= stale_s:
            told = True
            print(f"oomdoctor: waiting for rank {', '.join(map(str, waiting[:8]))} (still running) "
                  f"for the merged report, at most {wait_s - stale_s:.0f} s more", file=sys.stderr)
        if waiting:
            time.sleep(POLL_S)
    return [reports[r] for r in sorted(reports)], missing


def _read(store: Any, key: str) -> Report:
    report = Report.from_dict(json.loads(store.get(key)))
    store.delete_key(key)  # the launcher's store lives on until the job ends: keep it small
    return report


def _silent(counter: int, stale_s: float) -> str:
    if counter == 0:
        return ("it gave no sign of life in the job's store: it died early, "
                "or it runs without `-m oomdoctor run`")
    return f"it stopped before sending it (no sign of life for {stale_s:.0f} s): killed, crashed or out of host memory"
