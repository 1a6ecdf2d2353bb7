"""FSDP (`fully_shard`, gloo on CPU): each rank's report counts its shards, the job's total the model."""
from __future__ import annotations

import json
import textwrap

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow

LAYERS, WIDTH = 4, 256
PARAM_BYTES = LAYERS * (WIDTH * WIDTH + WIDTH) * 4  # the whole model, fp32

FSDP_SCRIPT = textwrap.dedent(f"""
    import torch, torch.distributed as dist
    from torch import nn
    from torch.distributed.fsdp import fully_shard
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear({WIDTH}, {WIDTH}) for _ in range({LAYERS})])
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        loss = model(torch.randn(8, {WIDTH})).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dist.destroy_process_group()
""")


def test_fsdp_ranks_count_their_shards_and_the_job_total_counts_the_model(tmp_path):
    # GIVEN a model sharded by fully_shard over 2 processes, trained with Adam
    (tmp_path / "fsdp.py").write_text(FSDP_SCRIPT)
    # WHEN it runs under oomdoctor
    result = run_cli("run", "--nproc-per-node", "2", "--json", "r.json", "fsdp.py", cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = json.loads((tmp_path / "r.json").read_text())
    # THEN each rank holds half of the parameters and half of Adam's two moments (DTensor local shards)
    for rank in merged["ranks"]:
        held = rank["peak_by_category"]
        assert held["parameters"] == pytest.approx(PARAM_BYTES / 2, rel=0.01)
        assert held["optimizer_state"] == pytest.approx(PARAM_BYTES, rel=0.01)
    # AND the job's total, beside the ranks, is the whole model
    job = merged["aggregates"]["job"]
    assert job["ranks"] == 2
    assert job["peak_by_category"]["parameters"] == pytest.approx(PARAM_BYTES, rel=0.01)
    assert job["peak_bytes"] == sum(r["peak_bytes"] for r in merged["ranks"])
