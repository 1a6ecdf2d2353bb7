# Source: https://github.com/willisma/SiT/pull/43 ("fix: OOM error when sampling during training": "Simply
# use torch.no_grad() to avoid OOM")
# Bug: SiT's train.py generates EMA samples every `sample_every` steps inside the training loop
# with no `torch.no_grad()`. The EMA copy is frozen (`requires_grad(ema, False)`), so the ODE
# sampler itself records nothing, but the Stable-Diffusion VAE is never frozen: decoding the
# latents to images records the whole decoder's activations, a graph nobody back-propagates. It is
# kept alive by `samples` until the next sampling round, while training goes on: OOM.
# Fix (the PR): run the sampling block under `torch.no_grad()`.
# Expected finding: missing-no-grad at `samples = vae.decode(samples / 0.18215).sample`.
from collections import OrderedDict
from copy import deepcopy
from types import SimpleNamespace

import torch
from torch import nn


class SiT(nn.Module):
    """Stand-in SiT: a small conv net on 4x8x8 latents, conditioned on t and the class (1000 = null)."""

    def __init__(self, in_channels=4, hidden=64, num_classes=10, class_dropout_prob=0.1):
        super().__init__()
        self.num_classes = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.y_embedder = nn.Embedding(num_classes + 1, hidden)
        self.t_embedder = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.Sequential(nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
                                    nn.Conv2d(hidden, hidden, 3, padding=1))
        self.out = nn.Conv2d(hidden, in_channels, 3, padding=1)

    def forward(self, x, t, y):
        if self.training:
            drop = torch.rand(y.shape[0]) < self.class_dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        c = self.y_embedder(y) + self.t_embedder(t[:, None])
        h = self.inp(x) + c[:, :, None, None]
        return self.out(self.blocks(h))

    def forward_with_cfg(self, x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y)
        cond_eps, uncond_eps = torch.split(model_out, len(model_out) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([half_eps, half_eps], dim=0)


class LatentDist:
    def __init__(self, mean, logvar):
        self.mean, self.std = mean, torch.exp(0.5 * logvar)

    def sample(self):
        return self.mean + self.std * torch.randn_like(self.mean)


class AutoencoderKL(nn.Module):
    """Stand-in for diffusers' `AutoencoderKL.from_pretrained("stabilityai/sd-vae-ft-ema")`."""

    def __init__(self, ch=32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, ch, 3, stride=2, padding=1), nn.SiLU(),
                                     nn.Conv2d(ch, ch, 3, stride=2, padding=1), nn.SiLU(),
                                     nn.Conv2d(ch, 8, 3, padding=1))
        self.decoder = nn.Sequential(nn.Conv2d(4, ch, 3, padding=1), nn.SiLU(),
                                     nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(),
                                     nn.Upsample(scale_factor=2), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(),
                                     nn.Conv2d(ch, 3, 3, padding=1))

    def encode(self, x):
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return SimpleNamespace(latent_dist=LatentDist(mean, logvar.clamp(-30, 20)))

    def decode(self, z):
        return SimpleNamespace(sample=self.decoder(z))


class Transport:
    """Linear interpolant, velocity prediction (SiT defaults)."""

    def __init__(self, train_eps=0.0, sample_eps=0.0):
        self.train_eps, self.sample_eps = train_eps, sample_eps

    def training_losses(self, model, x1, model_kwargs):
        t = torch.rand(x1.shape[0]) * (1 - 2 * self.train_eps) + self.train_eps
        x0 = torch.randn_like(x1)
        xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0
        ut = x1 - x0
        model_output = model(xt, t, **model_kwargs)
        return {"loss": ((model_output - ut) ** 2).mean(dim=(1, 2, 3))}

    def drift(self, x, t, model, **model_kwargs):
        return model(x, t, **model_kwargs)


class ode:
    """ODE solver class (fixed-step Euler, as `odeint(..., method="euler")`)."""

    def __init__(self, drift, *, t0, t1, num_steps):
        self.drift = drift
        self.t = torch.linspace(t0, t1, num_steps)

    def sample(self, x, model, **model_kwargs):
        samples = [x]
        for t_cur, t_next in zip(self.t[:-1], self.t[1:]):
            t = torch.ones(x.size(0)) * t_cur
            x = x + (t_next - t_cur) * self.drift(x, t, model, **model_kwargs)
            samples.append(x)
        return torch.stack(samples)


class Sampler:
    def __init__(self, transport):
        self.transport = transport

    def sample_ode(self, *, num_steps=10):
        return ode(self.transport.drift, t0=0.0, t1=1.0, num_steps=num_steps).sample


@torch.no_grad()
def update_ema(ema_model, model, decay=0.9999):
    ema_params = OrderedDict(ema_model.named_parameters())
    model_params = OrderedDict(model.named_parameters())
    for name, param in model_params.items():
        ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)


def requires_grad(model, flag=True):
    for p in model.parameters():
        p.requires_grad = flag


def all_gather_into_tensor(output, tensor):
    """Single-process stand-in for `dist.all_gather_into_tensor` (a collective, not differentiable)."""
    with torch.no_grad():
        output.copy_(tensor)


def log_image(images, step):
    print(f"(step={step:07d}) logged {images.shape[0]} EMA samples, mean {images.mean().item():.4f}")


args = SimpleNamespace(global_batch_size=8, image_size=32, num_classes=10, epochs=3, log_every=10,
                       sample_every=10, cfg_scale=4.0, wandb=True)
torch.manual_seed(0)
device = "cpu"
latent_size = args.image_size // 4
model = SiT(num_classes=args.num_classes)
ema = deepcopy(model).to(device)
requires_grad(ema, False)
transport = Transport()
transport_sampler = Sampler(transport)
vae = AutoencoderKL().to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)

images = torch.rand(96, 3, args.image_size, args.image_size) * 2 - 1
labels = torch.randint(0, args.num_classes, (96,))
loader = [(images[i:i + args.global_batch_size], labels[i:i + args.global_batch_size])
          for i in range(0, 96, args.global_batch_size)]

update_ema(ema, model, decay=0)
model.train()
ema.eval()

train_steps = 0
log_steps = 0
running_loss = 0

local_batch_size = args.global_batch_size
ys = torch.randint(args.num_classes, size=(local_batch_size,), device=device)
use_cfg = args.cfg_scale > 1.0
n = ys.size(0)
zs = torch.randn(n, 4, latent_size, latent_size, device=device)
if use_cfg:
    zs = torch.cat([zs, zs], 0)
    y_null = torch.tensor([args.num_classes] * n, device=device)
    ys = torch.cat([ys, y_null], 0)
    sample_model_kwargs = dict(y=ys, cfg_scale=args.cfg_scale)
    model_fn = ema.forward_with_cfg
else:
    sample_model_kwargs = dict(y=ys)
    model_fn = ema.forward

for epoch in range(args.epochs):
    for x, y in loader:
        x = x.to(device)
        y = y.to(device)
        with torch.no_grad():
            x = vae.encode(x).latent_dist.sample().mul_(0.18215)
        model_kwargs = dict(y=y)
        loss_dict = transport.training_losses(model, x, model_kwargs)
        loss = loss_dict["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema(ema, model)

        running_loss += loss.item()
        log_steps += 1
        train_steps += 1
        if train_steps % args.log_every == 0:
            print(f"(step={train_steps:07d}) Train Loss: {running_loss / log_steps:.4f}")
            running_loss = 0
            log_steps = 0

        if train_steps % args.sample_every == 0 and train_steps > 0:
            sample_fn = transport_sampler.sample_ode()  # default to ode sampling
            samples = sample_fn(zs, model_fn, **sample_model_kwargs)[-1]
            if use_cfg:  # remove null samples
                samples, _ = samples.chunk(2, dim=0)
            samples = vae.decode(samples / 0.18215).sample  # EXPECT: missing-no-grad
            out_samples = torch.zeros((args.global_batch_size, 3, args.image_size, args.image_size), device=device)
            all_gather_into_tensor(out_samples, samples)
            if args.wandb:
                log_image(out_samples, train_steps)

model.eval()
print("Done!")
