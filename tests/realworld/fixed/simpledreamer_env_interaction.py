# Source: https://github.com/kc-ml2/SimpleDreamer/issues/7 ("Torch no grad"; fixed in commit e12d4db
# "feat no_grad decorator in environment_interaction function #7")
# Bug: the Dreamer agent collects experience in `environment_interaction` without
# `torch.no_grad()`. Every environment step runs the encoder, the RSSM recurrent and
# representation models and the actor with autograd on, and the recurrent state `deterministic`
# (and `posterior`) feeds the next step, so the recorded graph chains across the whole episode; only
# `action` is detached. Nothing is ever back-propagated through it: "the execution would raise the
# cuda out of memory runtime error without the torch.no_grad decorator" (CarRacing).
# Fix (the commit): decorate `environment_interaction` with `@torch.no_grad()`.
# Fixed twin: `environment_interaction` is decorated with `@torch.no_grad()`.
from types import SimpleNamespace as NS

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import TanhTransform


def horizontal_forward(network, x, y=None, input_shape=(-1,), output_shape=(-1,)):
    batch_with_horizon_shape = x.shape[: -len(input_shape)]
    if not batch_with_horizon_shape:
        batch_with_horizon_shape = (1,)
    if y is not None:
        x = torch.cat((x, y), -1)
        input_shape = (x.shape[-1],)
    x = x.reshape(-1, *input_shape)
    x = network(x)
    return x.reshape(*batch_with_horizon_shape, *output_shape)


def build_network(input_size, hidden_size, num_layers, activation, output_size):
    activation = getattr(nn, activation)()
    layers = [nn.Linear(input_size, hidden_size), activation]
    for i in range(num_layers - 2):
        layers += [nn.Linear(hidden_size, hidden_size), activation]
    layers.append(nn.Linear(hidden_size, output_size))
    return nn.Sequential(*layers)


def create_normal_dist(x, std=None, mean_scale=1, init_std=0, min_std=0.1, event_shape=None):
    if std == None:
        mean, std = torch.chunk(x, 2, -1)
        mean = mean_scale * torch.tanh(mean / mean_scale)
        std = F.softplus(std + init_std) + min_std
    else:
        mean = x
    dist = torch.distributions.Normal(mean, std)
    if event_shape:
        dist = torch.distributions.Independent(dist, event_shape)
    return dist


def compute_lambda_values(rewards, values, continues, horizon_length, device, lambda_):
    rewards = rewards[:, :-1]
    continues = continues[:, :-1]
    next_values = values[:, 1:]
    last = next_values[:, -1]
    inputs = rewards + continues * next_values * (1 - lambda_)
    outputs = []
    for index in reversed(range(horizon_length - 1)):
        last = inputs[:, index] + continues[:, index] * lambda_ * last
        outputs.append(last)
    return torch.stack(list(reversed(outputs)), dim=1).to(device)


class DynamicInfos:
    def __init__(self, device):
        self.device = device
        self.data = {}

    def append(self, **kwargs):
        for key, value in kwargs.items():
            self.data.setdefault(key, []).append(value)

    def get_stacked(self, time_axis=1):
        stacked_data = NS(**{key: torch.stack(self.data[key], dim=time_axis).to(self.device) for key in self.data})
        self.clear()
        return stacked_data

    def clear(self):
        self.data = {}


class Encoder(nn.Module):  # vector observations instead of the conv encoder
    def __init__(self, observation_shape, config):
        super().__init__()
        c = config.parameters.dreamer
        self.network = build_network(observation_shape[0], c.hidden_size, 2, "ELU", c.embedded_state_size)

    def forward(self, x):
        return horizontal_forward(self.network, x, input_shape=(x.shape[-1],))


class Decoder(nn.Module):
    def __init__(self, observation_shape, config):
        super().__init__()
        c = config.parameters.dreamer
        self.observation_shape = observation_shape
        self.network = build_network(c.stochastic_size + c.deterministic_size, c.hidden_size, 2, "ELU",
                                     observation_shape[0])

    def forward(self, posterior, deterministic):
        x = horizontal_forward(self.network, posterior, deterministic, output_shape=self.observation_shape)
        return create_normal_dist(x, std=1, event_shape=len(self.observation_shape))


class RecurrentModel(nn.Module):
    def __init__(self, action_size, config):
        super().__init__()
        c = config.parameters.dreamer
        self.device = config.operation.device
        self.deterministic_size = c.deterministic_size
        self.activation = nn.ELU()
        self.linear = nn.Linear(c.stochastic_size + action_size, c.hidden_size)
        self.recurrent = nn.GRUCell(c.hidden_size, self.deterministic_size)

    def forward(self, embedded_state, action, deterministic):
        x = torch.cat((embedded_state, action), 1)
        x = self.activation(self.linear(x))
        return self.recurrent(x, deterministic)

    def input_init(self, batch_size):
        return torch.zeros(batch_size, self.deterministic_size).to(self.device)


class TransitionModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config.parameters.dreamer
        self.device = config.operation.device
        self.stochastic_size = c.stochastic_size
        self.network = build_network(c.deterministic_size, c.hidden_size, 2, "ELU", c.stochastic_size * 2)

    def forward(self, x):
        prior_dist = create_normal_dist(self.network(x), min_std=0.1)
        return prior_dist, prior_dist.rsample()

    def input_init(self, batch_size):
        return torch.zeros(batch_size, self.stochastic_size).to(self.device)


class RepresentationModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config.parameters.dreamer
        self.network = build_network(c.embedded_state_size + c.deterministic_size, c.hidden_size, 2, "ELU",
                                     c.stochastic_size * 2)

    def forward(self, embedded_observation, deterministic):
        x = self.network(torch.cat((embedded_observation, deterministic), 1))
        posterior_dist = create_normal_dist(x, min_std=0.1)
        return posterior_dist, posterior_dist.rsample()


class RSSM(nn.Module):
    def __init__(self, action_size, config):
        super().__init__()
        self.recurrent_model = RecurrentModel(action_size, config)
        self.transition_model = TransitionModel(config)
        self.representation_model = RepresentationModel(config)

    def recurrent_model_input_init(self, batch_size):
        return self.transition_model.input_init(batch_size), self.recurrent_model.input_init(batch_size)


class RewardModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config.parameters.dreamer
        self.network = build_network(c.stochastic_size + c.deterministic_size, c.hidden_size, 2, "ELU", 1)

    def forward(self, posterior, deterministic):
        x = horizontal_forward(self.network, posterior, deterministic, output_shape=(1,))
        return create_normal_dist(x, std=1, event_shape=1)


class Actor(nn.Module):
    def __init__(self, discrete_action_bool, action_size, config):
        super().__init__()
        c = config.parameters.dreamer
        self.discrete_action_bool = discrete_action_bool
        action_size = action_size if discrete_action_bool else 2 * action_size
        self.network = build_network(c.stochastic_size + c.deterministic_size, c.hidden_size, 2, "ELU", action_size)

    def forward(self, posterior, deterministic):
        x = self.network(torch.cat((posterior, deterministic), -1))
        dist = create_normal_dist(x, mean_scale=5, init_std=5, min_std=1e-4)
        dist = torch.distributions.TransformedDistribution(dist, TanhTransform())
        return torch.distributions.Independent(dist, 1).rsample()


class Critic(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config.parameters.dreamer
        self.network = build_network(c.stochastic_size + c.deterministic_size, c.hidden_size, 2, "ELU", 1)

    def forward(self, posterior, deterministic):
        x = horizontal_forward(self.network, posterior, deterministic, output_shape=(1,))
        return create_normal_dist(x, std=1, event_shape=1)


class ReplayBuffer(object):
    def __init__(self, observation_shape, action_size, device, config):
        self.device = device
        self.capacity = int(config.parameters.dreamer.buffer.capacity)
        self.observation = np.empty((self.capacity, *observation_shape), dtype=np.float32)
        self.next_observation = np.empty((self.capacity, *observation_shape), dtype=np.float32)
        self.action = np.empty((self.capacity, action_size), dtype=np.float32)
        self.reward = np.empty((self.capacity, 1), dtype=np.float32)
        self.done = np.empty((self.capacity, 1), dtype=np.float32)
        self.buffer_index = 0
        self.full = False

    def __len__(self):
        return self.capacity if self.full else self.buffer_index

    def add(self, observation, action, reward, next_observation, done):
        self.observation[self.buffer_index] = observation
        self.action[self.buffer_index] = action
        self.reward[self.buffer_index] = reward
        self.next_observation[self.buffer_index] = next_observation
        self.done[self.buffer_index] = done
        self.buffer_index = (self.buffer_index + 1) % self.capacity
        self.full = self.full or self.buffer_index == 0

    def sample(self, batch_size, chunk_size):
        last_filled_index = self.buffer_index - chunk_size + 1
        sample_index = np.random.randint(0, self.capacity if self.full else last_filled_index, batch_size).reshape(-1, 1)
        sample_index = (sample_index + np.arange(chunk_size).reshape(1, -1)) % self.capacity
        as_t = lambda a: torch.as_tensor(a[sample_index], device=self.device).float()
        return NS(observation=as_t(self.observation), action=as_t(self.action), reward=as_t(self.reward),
                  next_observation=as_t(self.next_observation), done=as_t(self.done))


class Dreamer:
    def __init__(self, observation_shape, discrete_action_bool, action_size, writer, device, config):
        self.device = device
        self.action_size = action_size
        self.discrete_action_bool = discrete_action_bool
        self.encoder = Encoder(observation_shape, config).to(self.device)
        self.decoder = Decoder(observation_shape, config).to(self.device)
        self.rssm = RSSM(action_size, config).to(self.device)
        self.reward_predictor = RewardModel(config).to(self.device)
        self.actor = Actor(discrete_action_bool, action_size, config).to(self.device)
        self.critic = Critic(config).to(self.device)
        self.buffer = ReplayBuffer(observation_shape, action_size, self.device, config)
        self.config = config.parameters.dreamer
        self.model_params = (list(self.encoder.parameters()) + list(self.decoder.parameters())
                             + list(self.rssm.parameters()) + list(self.reward_predictor.parameters()))
        self.model_optimizer = torch.optim.Adam(self.model_params, lr=self.config.model_learning_rate)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=self.config.actor_learning_rate)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.config.critic_learning_rate)
        self.dynamic_learning_infos = DynamicInfos(self.device)
        self.behavior_learning_infos = DynamicInfos(self.device)
        self.writer = writer
        self.num_total_episode = 0

    def train(self, env):
        if len(self.buffer) < 1:
            self.environment_interaction(env, self.config.seed_episodes)
        for iteration in range(self.config.train_iterations):
            for collect_interval in range(self.config.collect_interval):
                data = self.buffer.sample(self.config.batch_size, self.config.batch_length)
                posteriors, deterministics = self.dynamic_learning(data)
                self.behavior_learning(posteriors, deterministics)
            self.environment_interaction(env, self.config.num_interaction_episodes)
            self.evaluate(env)

    def evaluate(self, env):
        self.environment_interaction(env, self.config.num_evaluate, train=False)

    def dynamic_learning(self, data):
        prior, deterministic = self.rssm.recurrent_model_input_init(len(data.action))
        data.embedded_observation = self.encoder(data.observation)
        for t in range(1, self.config.batch_length):
            deterministic = self.rssm.recurrent_model(prior, data.action[:, t - 1], deterministic)
            prior_dist, prior = self.rssm.transition_model(deterministic)
            posterior_dist, posterior = self.rssm.representation_model(data.embedded_observation[:, t], deterministic)
            self.dynamic_learning_infos.append(
                priors=prior, prior_dist_means=prior_dist.mean, prior_dist_stds=prior_dist.scale,
                posteriors=posterior, posterior_dist_means=posterior_dist.mean,
                posterior_dist_stds=posterior_dist.scale, deterministics=deterministic)
            prior = posterior
        infos = self.dynamic_learning_infos.get_stacked()
        self._model_update(data, infos)
        return infos.posteriors.detach(), infos.deterministics.detach()

    def _model_update(self, data, posterior_info):
        reconstructed_observation_dist = self.decoder(posterior_info.posteriors, posterior_info.deterministics)
        reconstruction_observation_loss = reconstructed_observation_dist.log_prob(data.observation[:, 1:])
        reward_dist = self.reward_predictor(posterior_info.posteriors, posterior_info.deterministics)
        reward_loss = reward_dist.log_prob(data.reward[:, 1:])
        prior_dist = create_normal_dist(posterior_info.prior_dist_means, posterior_info.prior_dist_stds, event_shape=1)
        posterior_dist = create_normal_dist(posterior_info.posterior_dist_means, posterior_info.posterior_dist_stds,
                                            event_shape=1)
        kl_divergence_loss = torch.mean(torch.distributions.kl.kl_divergence(posterior_dist, prior_dist))
        kl_divergence_loss = torch.max(torch.tensor(self.config.free_nats).to(self.device), kl_divergence_loss)
        model_loss = (self.config.kl_divergence_scale * kl_divergence_loss
                      - reconstruction_observation_loss.mean() - reward_loss.mean())
        self.model_optimizer.zero_grad()
        model_loss.backward()
        nn.utils.clip_grad_norm_(self.model_params, self.config.clip_grad, norm_type=self.config.grad_norm_type)
        self.model_optimizer.step()

    def behavior_learning(self, states, deterministics):
        state = states.reshape(-1, self.config.stochastic_size)
        deterministic = deterministics.reshape(-1, self.config.deterministic_size)
        for t in range(self.config.horizon_length):
            action = self.actor(state, deterministic)
            deterministic = self.rssm.recurrent_model(state, action, deterministic)
            _, state = self.rssm.transition_model(deterministic)
            self.behavior_learning_infos.append(priors=state, deterministics=deterministic)
        self._agent_update(self.behavior_learning_infos.get_stacked())

    def _agent_update(self, behavior_learning_infos):
        predicted_rewards = self.reward_predictor(behavior_learning_infos.priors,
                                                  behavior_learning_infos.deterministics).mean
        values = self.critic(behavior_learning_infos.priors, behavior_learning_infos.deterministics).mean
        continues = self.config.discount * torch.ones_like(values)
        lambda_values = compute_lambda_values(predicted_rewards, values, continues, self.config.horizon_length,
                                              self.device, self.config.lambda_)
        actor_loss = -torch.mean(lambda_values)
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), self.config.clip_grad, norm_type=self.config.grad_norm_type)
        self.actor_optimizer.step()

        value_dist = self.critic(behavior_learning_infos.priors.detach()[:, :-1],
                                 behavior_learning_infos.deterministics.detach()[:, :-1])
        value_loss = -torch.mean(value_dist.log_prob(lambda_values.detach()))
        self.critic_optimizer.zero_grad()
        value_loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), self.config.clip_grad, norm_type=self.config.grad_norm_type)
        self.critic_optimizer.step()

    @torch.no_grad()
    def environment_interaction(self, env, num_interaction_episodes, train=True):
        for epi in range(num_interaction_episodes):
            posterior, deterministic = self.rssm.recurrent_model_input_init(1)
            action = torch.zeros(1, self.action_size).to(self.device)
            observation = env.reset()
            embedded_observation = self.encoder(torch.from_numpy(observation).float().to(self.device))
            score = 0
            score_lst = np.array([])
            done = False
            while not done:
                deterministic = self.rssm.recurrent_model(posterior, action, deterministic)
                embedded_observation = embedded_observation.reshape(1, -1)
                _, posterior = self.rssm.representation_model(embedded_observation, deterministic)
                action = self.actor(posterior, deterministic).detach()
                buffer_action = action.cpu().numpy()[0]
                env_action = buffer_action
                next_observation, reward, done, info = env.step(env_action)
                if train:
                    self.buffer.add(observation, buffer_action, reward, next_observation, done)
                score += reward
                embedded_observation = self.encoder(torch.from_numpy(next_observation).float().to(self.device))
                observation = next_observation
                if done:
                    if train:
                        self.num_total_episode += 1
                        self.writer.add_scalar("training score", score, self.num_total_episode)
                    else:
                        score_lst = np.append(score_lst, score)
                    break
        if not train:
            evaluate_score = score_lst.mean()
            print("evaluate score : ", round(float(evaluate_score), 3))
            self.writer.add_scalar("test score", evaluate_score, self.num_total_episode)


class PointMassEnv:
    """Stand-in for the gym environment: steer a point to the origin; 8-d observation, 2-d action."""

    def __init__(self, episode_length=50, seed=0):
        self.rng = np.random.default_rng(seed)
        self.episode_length = episode_length

    def _obs(self):
        return np.concatenate([self.pos, self.vel, np.tanh(self.pos), [self.t / self.episode_length, 1.0]])

    def reset(self):
        self.pos = self.rng.uniform(-1, 1, 2)
        self.vel = np.zeros(2)
        self.t = 0
        return self._obs()

    def step(self, action):
        self.vel = 0.8 * self.vel + 0.1 * np.clip(action, -1, 1)
        self.pos = self.pos + self.vel
        self.t += 1
        reward = -float(np.linalg.norm(self.pos))
        return self._obs(), reward, self.t >= self.episode_length, {}


class Writer:
    def add_scalar(self, tag, value, step):
        pass


config = NS(
    operation=NS(device="cpu"),
    parameters=NS(dreamer=NS(
        stochastic_size=16, deterministic_size=64, embedded_state_size=32, hidden_size=64,
        buffer=NS(capacity=5000), seed_episodes=3, train_iterations=6, collect_interval=5,
        num_interaction_episodes=1, num_evaluate=1, batch_size=16, batch_length=16, horizon_length=10,
        model_learning_rate=6e-4, actor_learning_rate=8e-5, critic_learning_rate=8e-5, free_nats=3,
        kl_divergence_scale=1, clip_grad=100, grad_norm_type=2, discount=0.99, lambda_=0.95)))
torch.manual_seed(0)
np.random.seed(0)
env = PointMassEnv()
agent = Dreamer((8,), False, 2, Writer(), "cpu", config)
agent.train(env)
