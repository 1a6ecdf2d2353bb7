"""Steps are found without changes to the user's code, and their bytes are what they should be."""
from __future__ import annotations

import torch
from torch import nn

import oomdoctor
from oomdoctor.report.model import CATEGORIES

F32 = 4


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


PARAM_BYTES = (64 * 128 + 128 + 128 * 10 + 10) * F32


def train(model, optimizer, steps, batch=16):
    for _ in range(steps):
        loss = model(torch.randn(batch, 64)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def test_one_step_per_optimizer_step():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with oomdoctor.track(quiet=True) as session:
        train(model, optimizer, 7)
    report = session.report()
    assert report.steps_total == 7
    assert [s.index for s in report.steps] == list(range(7))


def test_parameters_gradients_and_adam_state_match_hand_computed_sizes():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with oomdoctor.track(quiet=True) as session:
        train(model, optimizer, 3)
        live = session.breakdown()
    # After optimizer.step() the gradients are still alive (zero_grad runs at the next step).
    assert live["parameters"] == PARAM_BYTES
    assert live["gradients"] == PARAM_BYTES
    # Adam: exp_avg and exp_avg_sq per parameter, plus a float32 `step` counter per parameter.
    assert live["optimizer_state"] == 2 * PARAM_BYTES + 4 * F32
    # Saved activations were freed by backward; what is left is the last loss scalar.
    assert live["activations"] == 0
    assert live["other"] <= 16


def test_a_model_built_before_the_session_is_counted_once_seen():
    # GIVEN a model and optimizer state created before tracking starts (a notebook's earlier cell)
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, optimizer, 1)
    # WHEN the next cell trains under track()
    with oomdoctor.track(quiet=True) as session:
        train(model, optimizer, 2)
        live = session.breakdown()
    # THEN parameters and optimizer state are counted, though no op created them in the session
    assert live["parameters"] == PARAM_BYTES
    assert live["optimizer_state"] == 2 * PARAM_BYTES + 4 * F32
    assert session.report().peak_bytes >= 4 * PARAM_BYTES


def test_several_optimizers_in_one_iteration_are_one_step():
    # A GAN: the discriminator and the generator each step once per iteration.
    torch.manual_seed(0)
    gen, disc = nn.Linear(8, 16), nn.Linear(16, 1)
    opt_g, opt_d = torch.optim.Adam(gen.parameters()), torch.optim.Adam(disc.parameters())
    with oomdoctor.track(quiet=True) as session:
        for _ in range(5):
            fake = gen(torch.randn(4, 8))
            d_loss = disc(fake.detach()).mean() - disc(torch.randn(4, 16)).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = -disc(fake).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
    assert session.report().steps_total == 5


def test_gradient_accumulation_is_one_step_per_optimizer_step():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with oomdoctor.track(quiet=True) as session:
        for _ in range(3):
            for _ in range(4):  # micro-batches
                (model(torch.randn(4, 64)).mean() / 4).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert session.report().steps_total == 3


def test_hand_written_updates_get_one_step_per_backward():
    model = mlp()
    with oomdoctor.track(quiet=True) as session:
        for _ in range(6):
            model(torch.randn(8, 64)).square().mean().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.data.add_(-0.01 * p.grad)
                    p.grad = None
    assert session.report().steps_total == 6


def test_lbfgs_closure_counts_one_step_per_step_call():
    model = mlp()
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=4)
    x, y = torch.randn(16, 64), torch.randn(16, 10)

    def closure():
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    with oomdoctor.track(quiet=True) as session:
        for _ in range(3):
            optimizer.step(closure)
    assert session.report().steps_total == 3


def test_explicit_steps_for_an_inference_loop():
    model = mlp().eval()
    with oomdoctor.track(quiet=True) as session:
        with torch.inference_mode():
            for _ in range(4):
                model(torch.randn(32, 64))
                session.step()
    report = session.report()
    assert report.steps_total == 4
    assert [s.index for s in report.steps] == [0, 1, 2, 3]
    assert all(s.duration_s > 0 for s in report.steps)


def test_memory_used_between_marked_steps_counts_for_the_run_peak():
    model = mlp()
    with oomdoctor.track(quiet=True, exact=True) as session:
        for _ in range(3):
            session.begin_step()
            model(torch.randn(4, 64)).sum().backward()
            session.end_step()
            big = torch.zeros(1 << 20)  # 4 MiB, between steps (an evaluation, say)
            del big
    report = session.report()
    assert [s.index for s in report.steps] == [0, 1, 2]
    assert max(s.peak_bytes for s in report.steps) < 4 << 20
    assert report.peak_bytes >= 4 << 20


def test_categories_sum_to_the_peak_of_every_exact_step():
    model = mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with oomdoctor.track(quiet=True, exact=True) as session:
        train(model, optimizer, 4)
    for step in session.report().steps:
        assert set(step.by_category) == set(CATEGORIES)
        assert sum(step.by_category.values()) == step.peak_bytes, step
