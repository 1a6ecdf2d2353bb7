# Source: https://github.com/ray-project/ray/pull/35259 ("moved dqn target inference in a torch.no_grad()
# context block": the target-network Q values in rllib/algorithms/dqn/dqn_torch_policy.py are computed
# with grad mode on, "inefficient when it comes to gpu memory allocation")
# Bug: `DQNTorchPolicy.loss()` evaluates the target network through the shared helper
# `self._compute_q_values(self.target_models[model], ...)` with grad mode on. The target model's
# parameters require grad, so the forward records a graph, but its output only enters the Bellman
# target, which is `.detach()`ed: that graph is never back-propagated.
# Fix: compute `q_tp1, ...` under `with torch.no_grad():`.
# Fixed twin: the target-network evaluation runs under no_grad.
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

FLOAT_MIN = -3.4e38


class SampleBatch:
    CUR_OBS, NEXT_OBS, ACTIONS, REWARDS, DONES, PRIO_WEIGHTS = "obs", "new_obs", "actions", "rewards", "dones", "weights"


def huber_loss(x, delta=1.0):
    return torch.where(torch.abs(x) < delta, torch.pow(x, 2.0) * 0.5, delta * (torch.abs(x) - 0.5 * delta))


def reduce_mean_ignore_inf(x, axis):
    mask = torch.ne(x, float("-inf"))
    x_zeroed = torch.where(mask, x, torch.zeros_like(x))
    return torch.sum(x_zeroed, axis) / torch.sum(mask.float(), axis)


class DQNTorchModel(nn.Module):
    def __init__(self, obs_dim, num_outputs, hiddens=(256, 256)):
        super().__init__()
        layers, last = [], obs_dim
        for size in hiddens:
            layers += [nn.Linear(last, size), nn.ReLU()]
            last = size
        self._hidden_layers = nn.Sequential(*layers)
        self.advantage_module = nn.Linear(last, num_outputs)
        self.value_module = nn.Linear(last, 1)
        self.tower_stats = {}

    def forward(self, input_dict, state, seq_lens):
        return self._hidden_layers(input_dict["obs"]), state

    def get_q_value_distributions(self, model_out):
        action_scores = self.advantage_module(model_out)
        logits = torch.unsqueeze(torch.ones_like(action_scores), -1)
        return action_scores, logits, logits

    def get_state_value(self, model_out):
        return self.value_module(model_out)


class DQNTorchPolicy:
    def __init__(self, obs_dim, num_actions, config):
        self.config = config
        self.num_actions = num_actions
        self.model = DQNTorchModel(obs_dim, num_actions)
        self.target_models = {self.model: copy.deepcopy(self.model)}
        self.q_func_vars = list(self.model.parameters())
        self._optimizer = torch.optim.Adam(self.q_func_vars, lr=config["lr"], eps=config["adam_epsilon"])

    def loss(self, model, dist_class, train_batch):
        # Q-network evaluation.
        q_t, q_logits_t, q_probs_t, _ = self._compute_q_values(
            model, {"obs": train_batch[SampleBatch.CUR_OBS]}, explore=False, is_training=True)

        # Target Q-network evaluation.
        with torch.no_grad():
            q_tp1, q_logits_tp1, q_probs_tp1, _ = self._compute_q_values(self.target_models[model], {"obs": train_batch[SampleBatch.NEXT_OBS]}, explore=False, is_training=True)

        # Q scores for actions which we know were selected in the given state.
        one_hot_selection = F.one_hot(train_batch[SampleBatch.ACTIONS].long(), self.num_actions)
        q_t_selected = torch.sum(
            torch.where(q_t > FLOAT_MIN, q_t, torch.tensor(0.0, device=q_t.device)) * one_hot_selection, 1)

        # compute estimate of best possible value starting from state at t + 1
        q_tp1_best_one_hot_selection = F.one_hot(torch.argmax(q_tp1, 1), self.num_actions)
        q_tp1_best = torch.sum(
            torch.where(q_tp1 > FLOAT_MIN, q_tp1, torch.tensor(0.0, device=q_tp1.device))
            * q_tp1_best_one_hot_selection, 1)

        q_tp1_best_masked = (1.0 - train_batch[SampleBatch.DONES].float()) * q_tp1_best

        # compute RHS of bellman equation
        q_t_selected_target = (train_batch[SampleBatch.REWARDS]
                               + self.config["gamma"] ** self.config["n_step"] * q_tp1_best_masked)

        # compute the error (potentially clipped)
        self._td_error = q_t_selected - q_t_selected_target.detach()
        self._q_loss = torch.mean(train_batch[SampleBatch.PRIO_WEIGHTS].float() * huber_loss(self._td_error))
        self._q_loss_stats = {
            "mean_q": torch.mean(q_t_selected),
            "q_loss": self._q_loss,
        }
        model.tower_stats["td_error"] = self._td_error
        model.tower_stats["q_loss_stats"] = self._q_loss_stats
        return self._q_loss

    def _compute_q_values(self, model, input_dict, state_batches=None, seq_lens=None, explore=None,
                          is_training=False):
        model_out, state = model(input_dict, state_batches or [], seq_lens)
        (action_scores, logits, probs_or_logits) = model.get_q_value_distributions(model_out)
        if self.config["dueling"]:
            state_score = model.get_state_value(model_out)
            advantages_mean = reduce_mean_ignore_inf(action_scores, 1)
            advantages_centered = action_scores - torch.unsqueeze(advantages_mean, 1)
            value = state_score + advantages_centered
        else:
            value = action_scores
        return value, logits, probs_or_logits, state

    def learn_on_batch(self, train_batch):
        loss = self.loss(self.model, None, train_batch)
        self._optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q_func_vars, self.config["grad_clip"])
        self._optimizer.step()
        return {k: v.item() for k, v in self.model.tower_stats["q_loss_stats"].items()}

    def update_target(self):
        self.target_models[self.model].load_state_dict(self.model.state_dict())


torch.manual_seed(0)
config = {"lr": 5e-4, "adam_epsilon": 1e-8, "gamma": 0.99, "n_step": 1, "dueling": True, "grad_clip": 40,
          "train_batch_size": 256, "target_network_update_freq": 10}
obs_dim, num_actions = 16, 4
policy = DQNTorchPolicy(obs_dim, num_actions, config)
# replay buffer of synthetic transitions
buffer_obs = torch.randn(4096, obs_dim)
buffer_actions = torch.randint(0, num_actions, (4096,))
buffer_rewards = (buffer_obs[:, 0] > 0).float()
buffer_next_obs = buffer_obs + 0.1 * torch.randn(4096, obs_dim)
buffer_dones = torch.rand(4096) < 0.05
for step in range(60):
    idx = torch.randint(0, 4096, (config["train_batch_size"],))
    train_batch = {SampleBatch.CUR_OBS: buffer_obs[idx], SampleBatch.NEXT_OBS: buffer_next_obs[idx],
                   SampleBatch.ACTIONS: buffer_actions[idx], SampleBatch.REWARDS: buffer_rewards[idx],
                   SampleBatch.DONES: buffer_dones[idx], SampleBatch.PRIO_WEIGHTS: torch.ones(len(idx))}
    stats = policy.learn_on_batch(train_batch)
    if step % config["target_network_update_freq"] == 0:
        policy.update_target()
print(f"mean_q {stats['mean_q']:.3f} q_loss {stats['q_loss']:.4f}")
