"""PyTorch Lightning: `OOMDoctorCallback` reports the memory of `trainer.fit`, step by step, also
when fit dies of out-of-memory. Real Lightning, a tiny model on CPU."""
from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import oomdoctor


@pytest.fixture(scope="module")
def pl():
    return pytest.importorskip("lightning.pytorch")


def fit(pl, callback, tmp_path, *, max_steps=5, huge_batch_at=None):
    """`trainer.fit` of a one-layer model on 8 batches of 8; batch `huge_batch_at` is 256x larger."""

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 64)

        def training_step(self, batch, batch_idx):
            (x,) = batch
            if batch_idx == huge_batch_at:
                x = x.repeat(256, 1)
            return self.layer(x).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, callbacks=[callback], default_root_dir=tmp_path,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Regression(), DataLoader(TensorDataset(torch.randn(64, 64)), batch_size=8))


def test_fit_reports_one_step_per_training_batch(pl, tmp_path, capsys):
    from oomdoctor.integrations.lightning import OOMDoctorCallback

    callback = OOMDoctorCallback(json=str(tmp_path / "fit.json"))
    fit(pl, callback, tmp_path, max_steps=5)
    assert callback.report.steps_total == 5
    assert callback.report.exit.exception is None
    assert "╭─ oomdoctor" in capsys.readouterr().err  # printed once fit ended
    assert json.loads((tmp_path / "fit.json").read_text())["steps_total"] == 5


def test_out_of_memory_inside_fit_is_reported_and_raised(pl, tmp_path):
    from oomdoctor.integrations.lightning import OOMDoctorCallback

    # GIVEN a capacity that fits batches of 8 but not the batch 256 times larger at index 2
    callback = OOMDoctorCallback(capacity="256KiB", quiet=True)
    # WHEN fit runs into it
    with pytest.raises(torch.OutOfMemoryError):
        fit(pl, callback, tmp_path, huge_batch_at=2)
    # THEN the report has the two steps that fit and the oom post-mortem at the user's line
    report = callback.report
    assert report.steps_total == 2
    assert report.exit.exception.startswith("OutOfMemoryError: CPU out of memory")
    [oom] = [f for f in report.findings if f.kind == "oom"]
    assert oom.location.file == __file__ and oom.location.code == "x = x.repeat(256, 1)"


def test_inside_a_running_session_the_callback_joins_it(pl, tmp_path, capsys):
    from oomdoctor.integrations.lightning import OOMDoctorCallback

    callback = OOMDoctorCallback()
    with oomdoctor.track(quiet=True) as session:
        fit(pl, callback, tmp_path, max_steps=3)
    assert session.report().steps_total == 3  # the training batches are the outer session's steps
    assert callback.report is None and "oomdoctor" not in capsys.readouterr().err  # its owner reports


def test_a_bad_capacity_fails_when_the_callback_is_made(pl):
    from oomdoctor.errors import BadInput
    from oomdoctor.integrations.lightning import OOMDoctorCallback

    with pytest.raises(BadInput, match="invalid size"):
        OOMDoctorCallback(capacity="lots")


def test_without_lightning_the_import_error_names_the_extra(monkeypatch):
    # GIVEN neither lightning nor pytorch_lightning can be imported
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "oomdoctor.integrations.lightning", raising=False)
    # THEN importing the integration says what to install
    with pytest.raises(ImportError, match=r"pip install 'oomdoctor\[lightning\]'"):
        importlib.import_module("oomdoctor.integrations.lightning")
