"""memory_viz snapshots: written from a CPU run, read back safely, summarized by `report`."""
from __future__ import annotations

import json
import os
import pickle
import textwrap

from conftest import run_cli
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
    # and `report` summarizes the snapshot by line
    summary = run_cli("report", "s.pickle", cwd=tmp_path)
    assert summary.returncode == 0
    assert "s.py:9" in summary.stdout


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
