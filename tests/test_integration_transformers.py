"""Hugging Face Transformers: `OOMDoctorCallback` reports the memory of `Trainer.train`, one step per
optimization step. Real Trainer, a tiny BERT built from a config (nothing downloaded), on CPU."""
from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

import oomdoctor


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


def make_trainer(hf, callback, tmp_path, *, max_steps=3, accumulation=1, batch=4, seq=16):
    torch.manual_seed(0)
    config = hf.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=256, num_labels=2)
    model = hf.BertForSequenceClassification(config)
    data = [{"input_ids": torch.randint(0, 100, (seq,)), "attention_mask": torch.ones(seq, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(32)]
    args = hf.TrainingArguments(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, use_cpu=True, report_to=[], save_strategy="no",
        logging_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
    )
    return hf.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])


def test_train_reports_one_step_per_optimization_step(hf, tmp_path, capsys):
    from oomdoctor.integrations.transformers import OOMDoctorCallback

    # GIVEN 3 optimization steps of 2 accumulated micro-batches each
    callback = OOMDoctorCallback(json=str(tmp_path / "train.json"))
    make_trainer(hf, callback, tmp_path, max_steps=3, accumulation=2).train()
    # THEN the report has 3 steps, not 6, each with parameters, gradients and Adam's state
    report = callback.report
    assert report.steps_total == 3
    assert all(report.peak_by_category[c] > 0 for c in ("parameters", "gradients", "optimizer_state"))
    assert "╭─ oomdoctor" in capsys.readouterr().err
    assert json.loads((tmp_path / "train.json").read_text())["steps_total"] == 3


def test_out_of_memory_in_train_is_reported_by_an_enclosing_track(hf, tmp_path):
    from oomdoctor.integrations.transformers import OOMDoctorCallback

    # GIVEN sequences far too long for the simulated capacity (a TrainerCallback never sees
    # exceptions: the enclosing track() does, and the callback joins it)
    callback = OOMDoctorCallback()
    trainer = make_trainer(hf, callback, tmp_path, seq=256, batch=8)
    with pytest.raises(torch.OutOfMemoryError):
        with oomdoctor.track(capacity="1MiB", quiet=True) as session:
            trainer.train()
    report = session.report()
    assert report.exit.exception.startswith("OutOfMemoryError: CPU out of memory")
    assert [f.kind for f in report.findings if f.kind == "oom"] == ["oom"]
    assert callback.report is None  # the session was track()'s, and track() reported it


def test_without_transformers_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "oomdoctor.integrations.transformers", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'oomdoctor\[transformers\]'"):
        importlib.import_module("oomdoctor.integrations.transformers")
