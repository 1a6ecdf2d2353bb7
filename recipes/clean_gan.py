"""Clean: a GAN loop, two optimizers, the fake batch detached for the discriminator.

    python recipes/clean_gan.py
    oomdoctor run recipes/clean_gan.py

The discriminator step uses `fake.detach()`, so its backward stops at the fake images; the
generator step back-propagates through the discriminator into the generator. Losses are logged
as numbers. Every graph is freed within its step: oomdoctor reports no finding.
"""
import torch
from torch import nn

torch.manual_seed(0)
latent = 16
generator = nn.Sequential(nn.Linear(latent, 64), nn.ReLU(), nn.Linear(64, 32))
discriminator = nn.Sequential(nn.Linear(32, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
bce = nn.BCEWithLogitsLoss()
ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)

g_losses, d_losses = [], []
for step in range(30):
    real = torch.randn(64, 32) * 0.5 + 1.0
    fake = generator(torch.randn(64, latent))

    d_loss = bce(discriminator(real), ones) + bce(discriminator(fake.detach()), zeros)
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()

    g_loss = bce(discriminator(fake), ones)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()

    d_losses.append(d_loss.item())
    g_losses.append(g_loss.item())

print(f"last losses: discriminator {d_losses[-1]:.4f}, generator {g_losses[-1]:.4f}")
