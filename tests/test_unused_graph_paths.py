"""missing-no-grad where the unused graph is built along a path the user shares with a trained one,
on real PyTorch loops under `oomdoctor.track()`:
- a DQN's target network run through the online network's helper (the helper's module line is
  back-propagated for the online network; the target's call must be reported at its own line);
- a distiller's teacher run through a method of its own (`teacher.features(x)`, no `__call__`)
  inside the back-propagated forward, after a pre-training phase longer than the warm-up;
- an evaluation running a seq2seq model's submodules through its own methods (`model.translate`),
  and a decoder run through its owner's `decode`, only on steps the per-op view skips.
"""
from __future__ import annotations

import copy
import inspect

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import oomdoctor


def line_of(fn, text: str) -> int:
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def no_grad_findings(session) -> list:
    return [f for f in session.report().findings if f.kind == "missing-no-grad"]


# -- a line shared by a trained call and an unused one -------------------------------------------
class QNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 64), nn.ReLU())
        self.head = nn.Linear(64, 4)

    def forward(self, obs):
        return self.body(obs)

    def q_values(self, hidden):
        return self.head(hidden)  # called by the helper: a second root module


class Policy:
    def __init__(self):
        torch.manual_seed(0)
        self.model = QNet()
        self.target = copy.deepcopy(self.model)  # train() mode, parameters require grad
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def _q(self, model, obs):
        return model.q_values(model(obs))

    def loss(self, obs, next_obs, no_grad_target: bool):
        q = self._q(self.model, obs).max(1).values
        if no_grad_target:
            with torch.no_grad():
                q_next = self._q(self.target, next_obs)
        else:
            q_next = self._q(self.target, next_obs)  # the target's call
        return (q - 0.9 * q_next.max(1).values.detach()).pow(2).mean()

    def learn(self, steps: int, no_grad_target: bool = False):
        for _ in range(steps):
            loss = self.loss(torch.randn(32, 8), torch.randn(32, 8), no_grad_target)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


def test_a_target_network_run_through_the_online_networks_helper_is_reported_at_its_call():
    with oomdoctor.track(quiet=True, device="cpu") as session:
        Policy().learn(12)
    [f] = no_grad_findings(session)  # the model and its head, called at one line: one finding
    assert f.location.line == line_of(Policy.loss, "# the target's call")
    assert f.evidence["module"] == "QNet" and f.evidence["unused"] == 12


def test_the_target_network_under_no_grad_is_silent():
    with oomdoctor.track(quiet=True, device="cpu") as session:
        Policy().learn(12, no_grad_target=True)
    assert no_grad_findings(session) == []


def test_a_detached_call_of_a_module_trained_through_the_same_helper_is_left_alone():
    # A GAN's discriminator step runs the generator through the same helper and detaches it, in
    # train() mode: the generator is back-propagated through its other call, so no finding.
    torch.manual_seed(0)
    gen, disc = nn.Linear(8, 16), nn.Linear(16, 1)
    opt_g, opt_d = torch.optim.SGD(gen.parameters(), lr=0.01), torch.optim.SGD(disc.parameters(), lr=0.01)

    def generate(z):
        return gen(z)

    with oomdoctor.track(quiet=True, device="cpu") as session:
        for _ in range(12):
            fake = generate(torch.randn(8, 8))
            d_loss = disc(fake.detach()).mean() - disc(torch.randn(8, 16)).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            g_loss = -disc(generate(torch.randn(8, 8))).mean()
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
    assert no_grad_findings(session) == []


# -- a teacher run through a method inside a trained forward -------------------------------------
class Net(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, 10)

    def features(self, x):
        feat = self.stage(self.stem(x))
        return feat, self.fc(feat.relu().mean((2, 3)))

    def forward(self, x):
        return self.features(x)[1]


class Distiller(nn.Module):
    def __init__(self, teacher: Net, student: Net, no_grad_teacher: bool):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.connector = nn.Conv2d(student.fc.in_features, teacher.fc.in_features, 1)
        self.no_grad_teacher = no_grad_teacher

    def forward(self, x):
        if self.no_grad_teacher:
            with torch.no_grad():
                t_feat, _ = self.teacher.features(x)
        else:
            t_feat, _ = self.teacher.features(x)  # the teacher's pass
        s_feat, s_out = self.student.features(x)
        return s_out, (self.connector(s_feat) - t_feat.detach()).pow(2).mean()


def distill(no_grad_teacher: bool):
    torch.manual_seed(0)
    teacher, student = Net(16), Net(8)
    batches = [(torch.randn(8, 3, 12, 12), torch.randint(0, 10, (8,))) for _ in range(4)]
    with oomdoctor.track(quiet=True, device="cpu") as session:
        # Pre-training: 6 steps, past the warm-up the per-op view watches.
        opt_t = torch.optim.SGD(teacher.parameters(), lr=0.01)
        for x, y in batches + batches[:2]:
            loss = nn.functional.cross_entropy(teacher(x), y)
            opt_t.zero_grad()
            loss.backward()
            opt_t.step()
        model = Distiller(teacher, student, no_grad_teacher)
        opt = torch.optim.SGD([*student.parameters(), *model.connector.parameters()], lr=0.01)
        for x, y in batches * 3:
            out, hint = model(x)
            loss = nn.functional.cross_entropy(out, y) + hint
            opt.zero_grad()
            loss.backward()
            opt.step()
    return session


def test_a_teacher_run_through_its_own_method_inside_a_trained_forward_is_reported():
    session = distill(no_grad_teacher=False)
    [f] = no_grad_findings(session)
    assert f.location.line == line_of(Distiller.forward, "# the teacher's pass")
    assert f.evidence["module"] == "Net" and f.evidence["unused"] >= 2


def test_the_teacher_under_no_grad_is_silent():
    assert no_grad_findings(distill(no_grad_teacher=True)) == []


class Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(checkpoint(self.block, x, use_reentrant=False))


def test_a_checkpointed_blocks_recomputation_in_backward_is_not_an_unused_graph():
    # Backward recomputes the block with grad on, outside the root forward: graphs that backward
    # does not reach (it uses the first forward's nodes), not the inner graphs of a root call.
    torch.manual_seed(0)
    model = Checkpointed()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with oomdoctor.track(quiet=True, device="cpu") as session:
        for _ in range(6):
            loss = model(torch.randn(8, 16)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert no_grad_findings(session) == []


# -- submodules run through the model's own methods, on steps the per-op view skips --------------
class Seq2Seq(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.enc = nn.GRU(16, 32, batch_first=True)
        self.cell = nn.GRUCell(16, 32)
        self.out = nn.Linear(32, 20)

    def forward(self, inp, out):
        state = self.encode(inp)
        logits = []
        for i in range(out.shape[1]):
            state, step_logits = self.decode_step(state, out[:, i])
            logits.append(step_logits)
        return torch.stack(logits, 1)

    def encode(self, inp):
        return self.enc(self.emb(inp))[1][0]

    def decode_step(self, state, tokens):
        state = self.cell(self.emb(tokens), state)
        return state, self.out(state)

    def translate(self, inp, steps: int = 6):
        state, tokens, result = self.encode(inp), torch.zeros(len(inp), dtype=torch.int64), []
        for _ in range(steps):
            state, logits = self.decode_step(state, tokens)
            tokens = logits.argmax(-1)
            result.append(tokens)
        return torch.stack(result, 1)


def score(model, inp, no_grad: bool):
    if no_grad:
        with torch.no_grad():
            return model.translate(inp).float().mean()
    return model.translate(inp).float().mean()  # the evaluation's call


def train_seq2seq(no_grad_eval: bool):
    torch.manual_seed(0)
    model = Seq2Seq()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with oomdoctor.track(quiet=True, device="cpu") as session:
        for step in range(1, 25):
            inp, out = torch.randint(0, 20, (8, 5)), torch.randint(0, 20, (8, 4))
            loss = nn.functional.cross_entropy(model(inp, out).flatten(0, 1), out.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 0:  # steps 10 and 20: neither is watched op by op
                score(model, torch.randint(0, 20, (8, 5)), no_grad_eval)
    return session


def test_an_evaluation_through_the_models_own_methods_is_reported_at_the_call_into_the_model():
    # The evaluation calls the embedding, the GRU, the cell and the head as root modules, from
    # lines that training runs too (through model(...)): one finding, at the line outside the
    # model that starts the evaluation, though it ran only on steps the per-op view skips.
    session = train_seq2seq(no_grad_eval=False)
    [f] = no_grad_findings(session)
    assert f.location.line == line_of(score, "# the evaluation's call")


def test_the_evaluation_under_no_grad_is_silent():
    assert no_grad_findings(train_seq2seq(no_grad_eval=True)) == []


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(16, 4)
        self.decoder = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 16))

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)


def test_a_decoder_first_run_on_a_step_the_per_op_view_skips_is_reported_at_the_callers_line():
    torch.manual_seed(0)
    model, vae = nn.Linear(4, 4), AutoEncoder()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with oomdoctor.track(quiet=True, device="cpu") as session:
        for step in range(1, 25):
            with torch.no_grad():
                z = vae.encode(torch.randn(8, 16))
            loss = model(z).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 10 == 0:
                samples = vae.decode(z)  # the sampling's decode
    # The decoder is a root module first called on step 10 (not watched op by op), through a
    # method of its owner: reported at the line calling that method, where no_grad goes.
    [f] = no_grad_findings(session)
    test = test_a_decoder_first_run_on_a_step_the_per_op_view_skips_is_reported_at_the_callers_line
    assert f.location.line == line_of(test, "# the sampling's decode")
    assert f.evidence["module"] == "Sequential" and samples.grad_fn is not None
