"""Multi-process runs: one report per rank, a merged report, the imbalance between ranks, and
rank 0 telling a slow rank from a dead one through the job's store."""
from __future__ import annotations

import io
import json
import textwrap
import threading
import time

import pytest

from conftest import run_cli
from oomdoctor.distributed import merge
from oomdoctor.distributed.gather import gather, publish
from oomdoctor.distributed.store import Heartbeat, connect
from oomdoctor.report.console import print_report
from oomdoctor.report.model import Device, Finding, Report

DDP_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    from torch import nn
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(64, 64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    extra = [torch.zeros(1 << 20) for _ in range(8)] if rank == 1 else []  # rank 1 keeps 32 MiB more
    for _ in range(4):
        loss = model(torch.randn(16, 64)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.destroy_process_group()
""")


def test_nproc_per_node_merges_rank_reports_and_flags_the_heavy_rank(tmp_path):
    # GIVEN a DDP script (gloo, 2 processes) where rank 1 keeps 32 MiB that rank 0 does not
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    # WHEN it runs under oomdoctor with two processes per node
    result = run_cli("run", "--nproc-per-node", "2", "--json", "r.json", "ddp.py", cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    # THEN each rank wrote its report and rank 0 merged them
    assert (tmp_path / "r.rank0.json").exists() and (tmp_path / "r.rank1.json").exists()
    merged = json.loads((tmp_path / "r.json").read_text())
    assert [r["rank"] for r in merged["ranks"]] == [0, 1]
    assert all(r["steps_total"] == 4 for r in merged["ranks"])
    imbalance = [f for f in merged["findings"] if f["kind"] == "imbalance"]
    assert len(imbalance) == 1 and imbalance[0]["title"].startswith("rank 1 peaks")
    assert imbalance[0]["bytes"] >= 31 * 1024 * 1024  # 32 MiB, give or take a loss scalar at a peak
    assert merged["peak_bytes"] == max(r["peak_bytes"] for r in merged["ranks"])
    assert result.stderr.count("╭─ oomdoctor") == 1  # one terminal report, not one per rank


def _report(rank: int, peak: int, findings=()) -> Report:
    return Report(device=Device("cpu", "cpu", None), peak_bytes=peak, rank=rank, findings=list(findings))


def test_merge_names_each_finding_by_rank_and_stays_quiet_when_balanced():
    leak = Finding("memory-growth", "warning", "grows 1 MiB per step", "d")
    merged = merge([_report(0, 100), _report(1, 110, [leak])])
    assert [f.title for f in merged.findings] == ["rank 1: grows 1 MiB per step"]
    assert merged.findings[0].evidence["rank"] == 1
    assert merged.peak_bytes == 110 and len(merged.ranks) == 2


def test_merged_report_round_trips_through_json():
    merged = merge([_report(0, 100), _report(1, 400)])
    assert Report.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged


def test_merged_report_holds_the_jobs_total_beside_the_ranks():
    merged = merge([_report(0, 100), _report(1, 400)], {2: "it stopped"})
    assert merged.aggregates["job"]["peak_bytes"] == 500
    assert merged.aggregates["job"]["ranks"] == 3 and merged.aggregates["job"]["reported"] == 2
    assert merged.notes == ["oomdoctor: warning: no report from rank 2: it stopped"]
    out = io.StringIO()
    print_report(merged, file=out)
    assert "job       500 B, the sum of the ranks' peaks" in out.getvalue()


@pytest.fixture
def job_store(monkeypatch):
    """A real TCPStore on loopback, where a torchrun agent would host it."""
    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    return server


def test_rank_0_waits_for_a_slow_rank_and_names_dead_ones_after_a_short_silence(job_store):
    # GIVEN rank 1 alive and slow (beats, sends its report after 4 s), rank 2 that beat then died,
    # and rank 3 that never gave a sign of life
    slow, dead = Heartbeat("job/alive/1"), Heartbeat("job/alive/2")
    time.sleep(1.5)
    dead.stop()
    late = threading.Timer(4.0, lambda: publish(connect(host=False, timeout=5), "job/", 1, _report(1, 7)))
    late.start()
    # WHEN rank 0 gathers, with a 2.5 s silence meaning death
    started = time.monotonic()
    try:
        reports, missing = gather(job_store, "job/", 4, wait_s=30, stale_s=2.5)
    finally:
        slow.stop()
        late.join()
    # THEN the slow rank's report is there, and the others are named with why, well before wait_s
    assert [(r.rank, r.peak_bytes) for r in reports] == [(1, 7)]
    assert sorted(missing) == [2, 3]
    assert "stopped before sending it" in missing[2]
    assert "no sign of life in the job's store" in missing[3]
    assert time.monotonic() - started < 15
