"""Reaching the job's c10d store from any rank, at any moment of the run, and the heartbeat.

Which store:
- under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`) the TCPStore that the agent of node 0
  hosts at MASTER_ADDR:MASTER_PORT, the one the script's `init_process_group` joins. It lives in
  the launcher, not in a worker: it is there from the first line of the script until every node's
  agent has passed its exit barrier, whatever the script did with its process group;
- other launchers (env:// init with MASTER_ADDR/MASTER_PORT): rank 0's process group hosts it, so
  rank 0 hosts it again at its end on the same address, multi-tenant: a process group still alive
  shares its server instead of fighting for the port.

A client connects only once something listens there: a TCPStore client retrying against a closed
port prints C++ tracebacks on stderr, which must never reach the user's terminal.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from datetime import timedelta
from typing import Any

BEAT_S = 1.0  # how often a rank bumps its counter


def address() -> tuple[str, int] | None:
    """Where the job's store listens, from the environment the launcher sets."""
    try:
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        return None


def launcher_hosts_store() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def connect(host: bool, timeout: float) -> Any | None:
    """A client of the job's store (hosting it when `host` and no launcher does); None when
    nothing listens within `timeout` seconds or no address is known."""
    where = address()
    if where is None:
        return None
    import torch.distributed as dist  # only in a distributed run: the CLI starts without torch

    addr, port = where
    wait = timedelta(seconds=max(timeout, 1.0))
    if host and not launcher_hosts_store():
        return dist.TCPStore(addr, port, is_master=True, multi_tenant=True, wait_for_workers=False, timeout=wait)
    deadline = time.monotonic() + timeout
    while not _listening(addr, port):
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.25)
    return dist.TCPStore(addr, port, is_master=False, timeout=wait)


def _listening(addr: str, port: int) -> bool:
    try:
        with socket.create_connection((addr, port), timeout=1.0):
            return True
    except OSError:
        return False


class Heartbeat:
    """Bumps `key` in the job's store every BEAT_S seconds from a daemon thread: the sign of life
    rank 0 reads to tell a rank still working from a dead one. Starts beating once the store is
    reachable and finds it again when it moves (a process group destroyed, rank 0 hosting anew)."""

    def __init__(self, key: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(key,), name="oomdoctor-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, key: str) -> None:
        store = None
        while not self._stop.is_set():
            try:
                store = store or connect(host=False, timeout=BEAT_S)
                if store is not None:
                    store.add(key, 1)
            except Exception:  # noqa: BLE001 - the store went away; the user's run goes on
                store = None
            self._stop.wait(BEAT_S)

    def stop(self) -> None:
        self._stop.set()  # no join: a beat after the report was sent harms nobody
