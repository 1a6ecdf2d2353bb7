# Pattern: WGAN-GP critic with a gradient penalty (modelled on https://github.com/caogang/wgan-gp/blob/081b0f3d43117195481e21c2acae25dd8cf04773/gan_toy.py)
# The penalty takes `autograd.grad(..., create_graph=True, retain_graph=True)` of the critic on
# interpolates and back-propagates through that gradient (a second-order graph built every critic
# step, on purpose). Three separate backwards per critic step (real with -1, fake with +1, penalty)
# into the same `.grad`s; the fake batch is made under no_grad (the original's `volatile=True`, frozen G), and
# the critic's parameters get `requires_grad = False` during the generator step. Costs are logged
# as floats (the original kept `D_cost` etc. as tensors). Every graph is consumed by a backward in the step that builds it. Expected: no finding.
import torch
import torch.autograd as autograd
import torch.nn as nn
import torch.optim as optim

torch.manual_seed(1)
DIM, LAMBDA, CRITIC_ITERS, BATCH_SIZE, ITERS = 64, 0.1, 5, 64, 8


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(2, DIM), nn.ReLU(True), nn.Linear(DIM, DIM), nn.ReLU(True),
                                  nn.Linear(DIM, 2))

    def forward(self, noise):
        return self.main(noise)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(2, DIM), nn.ReLU(True), nn.Linear(DIM, DIM), nn.ReLU(True),
                                  nn.Linear(DIM, 1))

    def forward(self, inputs):
        return self.main(inputs).view(-1)


def inf_train_gen():
    """8 gaussians on a circle, as in the toy script."""
    centers = torch.tensor([(1, 0), (-1, 0), (0, 1), (0, -1), (0.7071, 0.7071), (0.7071, -0.7071),
                            (-0.7071, 0.7071), (-0.7071, -0.7071)]) * 2.0
    while True:
        idx = torch.randint(0, 8, (BATCH_SIZE,))
        yield (centers[idx] + torch.randn(BATCH_SIZE, 2) * 0.02) / 1.414


def calc_gradient_penalty(netD, real_data, fake_data):
    alpha = torch.rand(BATCH_SIZE, 1).expand(real_data.size())
    interpolates = (alpha * real_data + (1 - alpha) * fake_data).requires_grad_(True)
    disc_interpolates = netD(interpolates)
    gradients = autograd.grad(outputs=disc_interpolates, inputs=interpolates,
                              grad_outputs=torch.ones(disc_interpolates.size()),
                              create_graph=True, retain_graph=True, only_inputs=True)[0]
    return ((gradients.norm(2, dim=1) - 1) ** 2).mean() * LAMBDA


netG, netD = Generator(), Discriminator()
optimizerD = optim.Adam(netD.parameters(), lr=1e-4, betas=(0.5, 0.9))
optimizerG = optim.Adam(netG.parameters(), lr=1e-4, betas=(0.5, 0.9))
one = torch.tensor(1.0)
mone = one * -1
data = inf_train_gen()
log = {"disc cost": [], "wasserstein distance": [], "gen cost": []}

for iteration in range(ITERS):
    # (1) Update D network
    for p in netD.parameters():
        p.requires_grad = True
    for iter_d in range(CRITIC_ITERS):
        real_data = next(data)
        netD.zero_grad()
        D_real = netD(real_data).mean()
        D_real.backward(mone)
        with torch.no_grad():  # totally freeze netG
            fake = netG(torch.randn(BATCH_SIZE, 2))
        D_fake = netD(fake).mean()
        D_fake.backward(one)
        gradient_penalty = calc_gradient_penalty(netD, real_data, fake)
        gradient_penalty.backward()
        D_cost = D_fake.item() - D_real.item() + gradient_penalty.item()
        Wasserstein_D = D_real.item() - D_fake.item()
        optimizerD.step()
    # (2) Update G network
    for p in netD.parameters():
        p.requires_grad = False  # to avoid computation
    netG.zero_grad()
    fake = netG(torch.randn(BATCH_SIZE, 2))
    G = netD(fake).mean()
    G.backward(mone)
    G_cost = -G.item()
    optimizerG.step()
    log["disc cost"].append(D_cost)
    log["wasserstein distance"].append(Wasserstein_D)
    log["gen cost"].append(G_cost)
print(f"disc cost {log['disc cost'][-1]:.4f} W {log['wasserstein distance'][-1]:.4f} gen {log['gen cost'][-1]:.4f}")
