"""Multi-process runs (torchrun, DDP, FSDP, one node or many): one report per rank, merged by rank 0.

`oomdoctor run --nproc-per-node N script.py` launches `torch.distributed.run` with
`-m oomdoctor run ...` per rank; a user's own `torchrun --nnodes M ... -m oomdoctor run ...` works
the same. Each rank writes its own report next to `--json r.json` on its own machine
(`r.rank1.json`); rank 0 prints and writes the merged report (`merge.py`: `ranks: [...]`, every
rank's findings named by rank, the memory imbalance, the job's total).

The reports travel through the job's own rendezvous, not the file system (nodes share no folder):
the c10d store that torchrun's agent hosts, or, under other launchers, the one at
MASTER_ADDR:MASTER_PORT (`store.py`). A rank that dies is named, and rank 0 does not wait for it
long, because each rank other than 0 beats a counter in that store every second from its start
(`start_rank`): when its script has ended, rank 0 waits for a rank until its report comes, or its
counter has stood still for 10 s (dead: killed, crashed; or it never started), or 120 s have passed
with the rank alive and not done (`gather.py`). The wait is bounded on every path; when no store is
reachable, each rank keeps its own report and says so in one line.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..report.json import write_json
from ..report.model import Report
from .gather import gather, publish
from .merge import merge
from .store import Heartbeat, address, connect

CONNECT_S = 60.0  # how long a rank looks for the job's store at its end

_heartbeat: Heartbeat | None = None  # this process's, from start_rank to finish_rank


@dataclass(frozen=True)
class Rank:
    rank: int
    world_size: int
    run_id: str
    attempt: int = 0  # torchrun's restart count: a restarted job's keys start afresh

    @property
    def prefix(self) -> str:
        return f"oomdoctor/{self.run_id}/{self.attempt}/"


def current_rank() -> Rank | None:
    """This process's place in a torchrun launch, from the environment torchrun sets."""
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except (KeyError, ValueError):
        return None
    if world <= 1:
        return None
    return Rank(rank, world, os.environ.get("TORCHELASTIC_RUN_ID", "none"), attempt)


def start_rank(rank: Rank | None) -> None:
    """Before the script runs: the sign of life rank 0 reads to tell a slow rank from a dead one."""
    global _heartbeat
    if rank is not None and rank.rank != 0 and _heartbeat is None and address() is not None:
        _heartbeat = Heartbeat(f"{rank.prefix}alive/{rank.rank}")


def rank_path(json_path: str, rank: int) -> Path:
    """Where rank `rank` writes its own report, next to `--json`."""
    root, ext = os.path.splitext(json_path)
    return Path(f"{root}.rank{rank}{ext or '.json'}")


def finish_rank(report: Report, json_path: str | None, rank: Rank) -> Report | None:
    """Send this rank's report to rank 0; on rank 0, return the merged report (None elsewhere)."""
    global _heartbeat
    own = replace(report, rank=rank.rank)
    if json_path:
        write_json(own, rank_path(json_path, rank.rank))
    try:
        return _exchange(own, rank)
    except Exception as exc:  # noqa: BLE001 - the tool never breaks the run: its own report still comes out
        text = str(exc).strip().splitlines()
        trouble = f"{type(exc).__name__}: {text[0][:160] if text else ''}"
        if rank.rank != 0:
            print(f"oomdoctor: warning: rank {rank.rank}'s report did not reach rank 0 through the job's store "
                  f"({trouble})", file=sys.stderr)
            return None
        return merge([own], {r: f"the job's store failed ({trouble})" for r in range(1, rank.world_size)})
    finally:
        if _heartbeat is not None:
            _heartbeat.stop()
            _heartbeat = None


def _exchange(own: Report, rank: Rank) -> Report | None:
    where = address()
    if where is None:
        raise ConnectionError("MASTER_ADDR/MASTER_PORT are not set: there is no store to reach")
    store = connect(host=rank.rank == 0, timeout=CONNECT_S)
    if store is None:
        raise ConnectionError(f"nothing listens at {where[0]}:{where[1]} after {CONNECT_S:.0f} s")
    if rank.rank != 0:
        publish(store, rank.prefix, rank.rank, own)
        return None
    reports, missing = gather(store, rank.prefix, rank.world_size)
    return merge([own, *reports], missing)


__all__ = ["Rank", "current_rank", "finish_rank", "merge", "rank_path", "start_rank"]
