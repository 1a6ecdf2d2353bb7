"""memory_viz snapshots: written from a CPU run, read back safely, summarized by `report`."""
from __future__ import annotations

import json
import os
import pickle
import textwrap

from conftest import run_cli
from test_report_load import report_cli
from oomdoctor.gpu.memviz import load_snapshot

SCRIPT = textwrap.dedent("""
    import torch
    model = torch.nn.Linear(256, 256)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(64, 256)).sum()
        loss.backward()
        opt.step()
    kept = torch.zeros(1 << 20)  # line 9: 4 MiB still live at the end
""")


def test_a_cpu_run_writes_a_snapshot_memory_viz_can_open(tmp_path):
    (tmp_path / "s.py").write_text(SCRIPT)
    result = run_cli("run", "--quiet", "--memory-viz", "s.pickle", "--json", "r.json", "s.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    snapshot = load_snapshot(tmp_path / "s.pickle")
    trace = snapshot["device_traces"][0]
    assert {e["action"] for e in trace} == {"alloc", "free_completed"}
    assert all({"addr", "size", "frames", "time_us"} <= set(e) for e in trace)
    big = [e for e in trace if e["action"] == "alloc" and e["size"] == 4 << 20]
    assert big and big[0]["frames"][0]["line"] == 9
    # the CUDA allocator model's view of the same program is in the report
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["aggregates"]["predicted_cuda_reserved_peak_bytes"] >= report["peak_bytes"]
    # and `report` summarizes what the snapshot has (a trace, no segments on CPU) and by line
    summary = run_cli("report", "s.pickle", cwd=tmp_path)
    assert summary.returncode == 0 and summary.stderr == ""
    allocs = sum(e["action"] == "alloc" for e in trace)
    assert f"trace: {len(trace)} events, {allocs} allocations" in summary.stdout
    assert "segments" not in summary.stdout and "reserved 0 B" not in summary.stdout
    assert "s.py:9" in summary.stdout and "4.00 MiB" in summary.stdout


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_loading_a_snapshot_never_runs_code_from_it(tmp_path):
    (tmp_path / "evil.pickle").write_bytes(pickle.dumps({"segments": [], "device_traces": [Evil()]}))
    result = run_cli("report", "evil.pickle", cwd=tmp_path)
    assert result.returncode == 2
    assert "refusing to load" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "pwned.txt").exists()


def test_not_a_snapshot_is_a_one_line_error(tmp_path):
    (tmp_path / "x.pickle").write_bytes(b"not a pickle at all")
    (tmp_path / "y.pickle").write_bytes(pickle.dumps([1, 2, 3]))
    for name in ("x.pickle", "y.pickle", "missing.pickle"):
        result = run_cli("report", name, cwd=tmp_path)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_cuda_style_snapshot_counts_segments_and_completed_frees(tmp_path):
    # GIVEN the structure torch.cuda.memory._snapshot() returns (no GPU here: written by hand)
    frames = [{"filename": "/usr/lib/python3/site-packages/torch/nn/linear.py", "line": 5, "name": "forward"},
              {"filename": "train.py", "line": 12, "name": "step"}]
    events = [{"action": "alloc", "addr": 1, "size": 2 << 20, "frames": frames},
              {"action": "alloc", "addr": 2, "size": 1 << 20, "frames": frames},
              {"action": "free_requested", "addr": 1, "size": 2 << 20, "frames": []},
              {"action": "free_completed", "addr": 1, "size": 2 << 20, "frames": []}]
    snapshot = {"segments": [{"total_size": 20 << 20, "allocated_size": 1 << 20, "blocks": []}],
                "device_traces": [events]}
    (tmp_path / "cuda.pickle").write_bytes(pickle.dumps(snapshot))
    result = run_cli("report", "cuda.pickle", cwd=tmp_path)
    # THEN reserved and allocated come from the segments, the trace's peak and end from its events
    assert result.returncode == 0, result.stderr
    assert "1 segments: reserved 20.00 MiB, allocated 1.00 MiB" in result.stdout
    assert "4 events, 2 allocations, 1 frees; peak live 3.00 MiB, live at the end 1.00 MiB" in result.stdout
    assert "train.py:12" in result.stdout  # the user's line, not torch's


def test_malformed_snapshots_are_one_line_errors(tmp_path):
    # GIVEN pickles that hold no class (so they load) but are not snapshots in many ways
    (tmp_path / "build.pickle").write_bytes(b"}}(X\x01\x00\x00\x00aK\x01ub.")  # BUILD on a dict
    (tmp_path / "folder.pickle").mkdir()
    bad = {"events": {"device_traces": [[1, 2]]},
           "size": {"device_traces": [[{"action": "alloc", "addr": 1, "size": "12"}]]},
           "negative": {"device_traces": [[{"action": "alloc", "addr": 1, "size": -5}]]},
           "huge": {"device_traces": [[{"action": "alloc", "addr": 1, "size": 10**400}]]},
           "segment": {"segments": [{"total_size": "x"}]},
           "traces": {"device_traces": "abc"},
           "frames": {"device_traces": [[{"action": "alloc", "addr": 1, "size": 12, "frames": [3]}]]}}
    for name, data in bad.items():
        (tmp_path / f"{name}.pickle").write_bytes(pickle.dumps(data))
    for name in ("build", "folder", *bad):
        code, _, err = report_cli("report", str(tmp_path / f"{name}.pickle"))  # in-process: fast
        # THEN each is one line naming the file, exit 2
        assert code == 2, (name, err)
        assert err.startswith(f"oomdoctor: error: {tmp_path / name}.pickle") and len(err.splitlines()) == 1, err
