"""Jobs across machines: two torchrun nodes on localhost that share no folder, one merged report.

Each node is a separate `python -m torch.distributed.run --nnodes 2` launch with its own working
directory and its own TMPDIR, on loopback addresses only, gloo on CPU: what two machines share is
the job's rendezvous, nothing else.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

DDP_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from torch import nn
    dist.init_process_group("gloo")
    model = nn.parallel.DistributedDataParallel(nn.Linear(64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(16, 64)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.destroy_process_group()
""")

DIES_SCRIPT = textwrap.dedent("""
    import os, signal
    import torch, torch.distributed as dist
    from torch import nn
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer does: no exception, no report
    model = nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.randn(16, 64)).square().mean().backward()
        opt.step()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(tmp_path: Path, script: str, rendezvous: list[str]) -> list[tuple[Path, subprocess.Popen]]:
    """Start both nodes' launchers, each in its own folder with its own TMPDIR."""
    nodes = []
    for node in (0, 1):
        folder, tmp = tmp_path / f"node{node}", tmp_path / f"tmp{node}"
        folder.mkdir()
        tmp.mkdir()
        (folder / "train.py").write_text(script)
        env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp), "COLUMNS": "100"}
        if sys.platform.startswith("linux"):
            env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only, whatever the host name resolves to
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                   "--nproc-per-node", "1", *rendezvous, "-m", "oomdoctor", "run", "--json", "r.json", "train.py"]
        with open(folder / "out.txt", "w") as out, open(folder / "err.txt", "w") as err:
            process = subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=err, start_new_session=True)
        nodes.append((folder, process))
    return nodes


def _stop(nodes: list[tuple[Path, subprocess.Popen]]) -> None:
    for _, process in nodes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_two_nodes_sharing_no_folder_give_one_merged_report_with_both_ranks(tmp_path):
    # GIVEN two torchrun nodes on localhost (c10d rendezvous), each in its own folder and TMPDIR
    nodes = _nodes(tmp_path, DDP_SCRIPT, ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}",
                                          "--rdzv-id", "two-nodes", "--local-addr", "127.0.0.1"])
    # WHEN the DDP job runs to its end
    try:
        codes = [process.wait(timeout=90) for _, process in nodes]
    finally:
        _stop(nodes)
    folders = [folder for folder, _ in nodes]
    errors = [(folder / "err.txt").read_text() for folder in folders]
    assert codes == [0, 0], [e[-2000:] for e in errors]
    # THEN one node holds the merged report, with both nodes' ranks, and prints it once
    merged = [folder / "r.json" for folder in folders if (folder / "r.json").exists()]
    assert len(merged) == 1
    report = json.loads(merged[0].read_text())
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    assert all(r["steps_total"] == 3 for r in report["ranks"])
    assert not [n for n in report["notes"] if "no report from rank" in n]
    assert report["aggregates"]["job"]["peak_bytes"] == sum(r["peak_bytes"] for r in report["ranks"])
    assert sum(e.count("╭─ oomdoctor") for e in errors) == 1
    # AND each node kept its own rank's report in its own folder: the exchange went through the store
    own = sorted(p.name for folder in folders for p in folder.glob("r.rank*.json"))
    assert own == ["r.rank0.json", "r.rank1.json"]
    assert all(len(list(folder.glob("r.rank*.json"))) == 1 for folder in folders)


def test_a_rank_killed_on_another_node_is_named_without_a_long_wait(tmp_path):
    # GIVEN two static-rendezvous nodes where rank 1 (node 1) is SIGKILLed mid-run
    nodes = _nodes(tmp_path, DIES_SCRIPT, ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())])
    node0 = nodes[0][0]
    try:
        # WHEN rank 0 ends (torchrun's node 0 then waits in its exit barrier for node 1's agent, which
        # failed: the launchers are stopped once rank 0's report is out)
        deadline = time.monotonic() + 90
        report = None
        while report is None and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                report = json.loads((node0 / "r.json").read_text())
            except (OSError, ValueError):  # not written yet, or half written
                report = None
    finally:
        _stop(nodes)
    # THEN the merged report has rank 0 and names rank 1 as gone
    assert report is not None, "rank 0 wrote no merged report"
    assert [r["rank"] for r in report["ranks"]] == [0]
    assert [n for n in report["notes"] if "no report from rank 1" in n]
    assert report["aggregates"]["job"]["ranks"] == 2 and report["aggregates"]["job"]["reported"] == 1
    # AND rank 0 did not wait two minutes for it: seconds between its own report and the merged one
    waited = (node0 / "r.json").stat().st_mtime - (node0 / "r.rank0.json").stat().st_mtime
    assert waited < 30, waited
