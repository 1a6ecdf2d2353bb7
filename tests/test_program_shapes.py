"""Steps and categories on the shapes real programs have (pytorch/examples: forward_forward,
time_sequence_prediction, word_language_model's generate.py, a trailing evaluation)."""
from __future__ import annotations

import torch
from torch import nn

import oomdoctor


def mlp(width: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, 1))


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_optimizers_that_take_turns_are_steps_of_their_own():
    # GIVEN layer-wise training: three steps of optimizer A, then three of optimizer B
    model = mlp()
    first = torch.optim.SGD(model[0].parameters(), lr=0.1)
    second = torch.optim.SGD(model[2].parameters(), lr=0.1)
    with oomdoctor.track(quiet=True, device="cpu") as session:
        for optimizer in (first, second):
            for _ in range(3):
                loss = model(torch.randn(8, 32)).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    # THEN six steps, as the script did six optimizer steps
    assert session.report().steps_total == 6


def test_parameters_are_parameters_when_forward_runs_inside_step_closure():
    # GIVEN LBFGS-style training: forward and backward run inside optimizer.step(closure)
    model = mlp(128)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 32)

    def closure():
        optimizer.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    with oomdoctor.track(quiet=True, device="cpu") as session:
        for _ in range(5):
            optimizer.step(closure)
    report = session.report()
    assert report.steps_total == 5
    assert report.peak_by_category["parameters"] == param_bytes(model)
    assert all(s.by_category["parameters"] == param_bytes(model) for s in report.steps)


def test_inference_only_the_model_is_parameters_and_step_0_starts_with_it():
    # GIVEN a model built before the session and used only for inference, marked step by step
    model = mlp(256)
    with oomdoctor.track(quiet=True, device="cpu") as session:
        for _ in range(4):
            with torch.no_grad():
                model(torch.randn(64, 32))
            session.step()
    report = session.report()
    assert report.peak_by_category["parameters"] == param_bytes(model)
    assert report.peak_by_category["other"] <= 64 * 32 * 4  # the input batch, nothing of the model
    assert report.steps[0].start_bytes >= param_bytes(model)


def test_a_large_evaluation_after_the_last_step_is_the_peak_and_says_where():
    # GIVEN 12 training steps, then one large evaluation forward without no_grad
    model = mlp(512)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reports = {}
    for exact in (False, True):
        with oomdoctor.track(quiet=True, device="cpu", exact=exact) as session:
            for _ in range(12):
                loss = model(torch.randn(8, 32)).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            outputs = model(torch.randn(4096, 32))  # 8 MiB of activations kept by the graph
        del outputs
        reports[exact] = session.report()
    default, exact_report = reports[False], reports[True]
    # THEN both place the peak after the last step; the default mode sees what the evaluation kept
    # (the 8 MiB its graph holds) and says its figure is an estimate, as the forward's own
    # temporaries are gone before it returns
    for report in (default, exact_report):
        assert report.peak_step is None and "after the last step" in report.aggregates["peak_where"]
    assert 8 * 2**20 < default.peak_bytes <= exact_report.peak_bytes * 1.10
    if default.peak_bytes < 0.9 * exact_report.peak_bytes:
        assert default.aggregates["peak_estimated"]
        assert any("It is an estimate" in note for note in default.notes)
    # and it warns that forwards after the last step ran unwatched, whatever the peak turned out to be
    assert any(note.startswith("1 forward pass(es) ran after the last step") for note in default.notes)
    assert not any("ran after the last step" in note for note in exact_report.notes)


def _train(model: nn.Module, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        loss = model(torch.randn(4, 32)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_training_in_other_threads_is_said_and_costs_no_memory_of_ours():
    import threading

    # GIVEN two threads training while the session watches from the main thread
    with oomdoctor.track(quiet=True, device="cpu") as session:
        threads = [threading.Thread(target=_train, args=(mlp(), 500), name=f"trainer-{i}") for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        phases_during = len(session.phases)
    report = session.report()
    # THEN no step is invented, our per-thread state did not grow, and the report says what it
    # did not watch and how to watch it
    assert report.steps_total == 0 and phases_during == 0
    assert len(session.hooks.other_threads) == 2
    assert any("Training ran in other threads (trainer-0, trainer-1)" in note for note in report.notes)
