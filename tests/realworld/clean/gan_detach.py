# Pattern (DCGAN): the discriminator step sees `fake.detach()`, the generator step back-propagates
# through the same fake; losses are logged with `.item()`. Two optimizers, one step each per
# iteration. Expected: no finding (in particular no missing-no-grad for the detached forward).
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
netG = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32), nn.Tanh())
netD = nn.Sequential(nn.Linear(32, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1))
optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
G_losses, D_losses = [], []
for i in range(40):
    real = torch.randn(64, 32)
    noise = torch.randn(64, 16)
    fake = netG(noise)
    netD.zero_grad()
    ones, zeros = torch.ones(64, 1), torch.zeros(64, 1)
    errD = F.binary_cross_entropy_with_logits(netD(real), ones) + \
        F.binary_cross_entropy_with_logits(netD(fake.detach()), zeros)
    errD.backward()
    optimizerD.step()
    netG.zero_grad()
    errG = F.binary_cross_entropy_with_logits(netD(fake), ones)
    errG.backward()
    optimizerG.step()
    G_losses.append(errG.item())
    D_losses.append(errD.item())
print(f"G {G_losses[-1]:.3f} D {D_losses[-1]:.3f}")
