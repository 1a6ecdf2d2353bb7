# Source: https://github.com/alexhernandezgarcia/gflownet/pull/133 ("Compute EMAs outside of pytorch")
# Bug: `GFlowNetAgent.train` keeps an exponential moving average of the loss for early stopping,
# `loss_term_ema = ema_alpha * losses[1] + (1 - ema_alpha) * loss_term_ema`, with the loss tensors
# themselves: "the whole pytorch computational graph is maintained in memory ... and grows very fast
# with every iteration" (each EMA links to the previous one and to that step's loss graph).
# Fix (the PR): compute the EMAs outside of pytorch, on `losses[1].item()` / `losses[2].item()`.
# Expected finding: retained-graph at the `loss_term_ema = ...` update line.
import torch
import torch.nn as nn
from torch.distributions.categorical import Categorical


class SequenceEnv:
    """Sequences of `length` tokens over a vocabulary of `n_tokens`, built left to right."""

    def __init__(self, length=6, n_tokens=4):
        self.length = length
        self.n_tokens = n_tokens
        self.obs_dim = length * n_tokens
        self.target = torch.arange(length) % n_tokens

    def state2policy(self, states):
        # states: (n, t) token ids, t <= length -> one-hot, zero-padded to `length`
        one_hot = torch.zeros(states.shape[0], self.length, self.n_tokens)
        if states.shape[1] > 0:
            one_hot[:, : states.shape[1]] = nn.functional.one_hot(states, self.n_tokens).float()
        return one_hot.flatten(1)

    def reward_batch(self, states):
        return torch.exp((states == self.target).float().sum(1) - self.length) + 1e-3


class GFlowNetAgent:
    def __init__(self, env, n_train_steps=40, batch_size=16, lr=1e-2, ema_alpha=0.5,
                 early_stopping=0.0, clip_grad_norm=1.0):
        self.env = env
        self.forward_policy = nn.Sequential(
            nn.Linear(env.obs_dim, 64), nn.LeakyReLU(), nn.Linear(64, 64), nn.LeakyReLU(),
            nn.Linear(64, env.n_tokens),
        )
        self.logZ = nn.Parameter(torch.zeros(1))
        self.logsoftmax = torch.nn.LogSoftmax(dim=1)
        self.opt = torch.optim.Adam(
            [{"params": self.forward_policy.parameters()}, {"params": [self.logZ], "lr": lr * 10}],
            lr=lr,
        )
        self.lr_scheduler = torch.optim.lr_scheduler.StepLR(self.opt, step_size=100, gamma=0.5)
        self.n_train_steps = n_train_steps
        self.batch_size = batch_size
        self.ema_alpha = ema_alpha
        self.early_stopping = early_stopping
        self.clip_grad_norm = clip_grad_norm

    def parameters(self):
        return list(self.forward_policy.parameters()) + [self.logZ]

    def sample_batch(self, n_samples):
        states = torch.zeros(n_samples, 0, dtype=torch.long)
        with torch.no_grad():
            for _ in range(self.env.length):
                logits = self.forward_policy(self.env.state2policy(states))
                actions = Categorical(logits=logits).sample()
                states = torch.cat([states, actions[:, None]], dim=1)
        return states

    def trajectorybalance_loss(self, it, batch):
        # Every state has a single parent (append-only sequences): log P_B = 0.
        sumlogprobs_f = torch.zeros(batch.shape[0])
        for t in range(self.env.length):
            logits_f = self.forward_policy(self.env.state2policy(batch[:, :t]))
            logprobs_f = self.logsoftmax(logits_f)[torch.arange(batch.shape[0]), batch[:, t]]
            sumlogprobs_f = sumlogprobs_f + logprobs_f
        rewards = self.env.reward_batch(batch)
        loss = (self.logZ.sum() + sumlogprobs_f - torch.log(rewards)).pow(2).mean()
        return loss, loss, loss

    def train(self):
        all_losses = []
        loss_term_ema = None
        loss_flow_ema = None
        for it in range(1, self.n_train_steps + 1):
            batch = self.sample_batch(self.batch_size)
            losses = self.trajectorybalance_loss(it, batch)  # returns (opt loss, *metrics)
            if not all([torch.isfinite(loss) for loss in losses]):
                print("Loss is not finite - skipping iteration")
            else:
                losses[0].backward()
                if self.clip_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.parameters(), self.clip_grad_norm)
                self.opt.step()
                self.lr_scheduler.step()
                self.opt.zero_grad()
                all_losses.append([i.item() for i in losses])

            # Moving average of the loss for early stopping
            if loss_term_ema and loss_flow_ema:
                loss_term_ema = self.ema_alpha * losses[1] + (1.0 - self.ema_alpha) * loss_term_ema  # EXPECT: retained-graph
                loss_flow_ema = self.ema_alpha * losses[2] + (1.0 - self.ema_alpha) * loss_flow_ema
                if loss_term_ema < self.early_stopping and loss_flow_ema < self.early_stopping:
                    break
            else:
                loss_term_ema = losses[1]
                loss_flow_ema = losses[2]
        print(f"{len(all_losses)} steps, loss {all_losses[-1][0]:.3f}, logZ {self.logZ.item():.3f}")


torch.manual_seed(0)
GFlowNetAgent(SequenceEnv()).train()
