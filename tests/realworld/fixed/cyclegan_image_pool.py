# Source: https://github.com/junyanz/pytorch-CycleGAN-and-pix2pix/pull/141 ("gpu memory leaks";
# the same trap: https://github.com/zackchase/mxnet-the-straight-dope/pull/293)
# Bug: the generated images are handed to the discriminator's history pool with their graph, and
# the pool keeps up to 50 of them: each kept image holds the generator's whole forward graph,
# "which results in out of memory issue". The holder is deep: `trainer.model.fake_B_pool.images`.
# Fix: feed the pool a tensor without history (`self.fake_B_pool.query(self.fake_B.detach())`).
# Fixed twin: the pool gets detached images (it fills up to 50 and stays there).
import random

import torch
from torch import nn


class ImagePool:
    """A buffer of previously generated images, to update the discriminator with a history."""

    def __init__(self, pool_size):
        self.pool_size = pool_size
        if self.pool_size > 0:
            self.num_imgs = 0
            self.images = []

    def query(self, images):
        if self.pool_size == 0:
            return images
        return_images = []
        for image in images:
            image = torch.unsqueeze(image, 0)
            if self.num_imgs < self.pool_size:
                self.num_imgs = self.num_imgs + 1
                self.images.append(image)
                return_images.append(image)
            else:
                p = random.uniform(0, 1)
                if p > 0.5:
                    random_id = random.randint(0, self.pool_size - 1)
                    tmp = self.images[random_id].clone()
                    self.images[random_id] = image
                    return_images.append(tmp)
                else:
                    return_images.append(image)
        return torch.cat(return_images, 0)


class Pix2PixLikeModel:
    def __init__(self):
        self.netG = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1), nn.Tanh())
        self.netD = nn.Sequential(nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(16, 1, 4))
        self.criterionGAN = nn.MSELoss()
        self.fake_B_pool = ImagePool(50)
        self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def set_input(self, data):
        self.real_A, self.real_B = data["A"], data["B"]

    def forward(self):
        self.fake_B = self.netG(self.real_A)

    def backward_D(self):
        fake_B = self.fake_B_pool.query(self.fake_B.detach())
        pred_fake = self.netD(fake_B.detach())
        pred_real = self.netD(self.real_B)
        self.loss_D = 0.5 * (self.criterionGAN(pred_fake, torch.zeros_like(pred_fake))
                             + self.criterionGAN(pred_real, torch.ones_like(pred_real)))
        self.loss_D.backward()

    def backward_G(self):
        pred_fake = self.netD(self.fake_B)
        self.loss_G = self.criterionGAN(pred_fake, torch.ones_like(pred_fake))
        self.loss_G.backward()

    def optimize_parameters(self):
        self.forward()
        self.optimizer_G.zero_grad()
        self.backward_G()
        self.optimizer_G.step()
        self.optimizer_D.zero_grad()
        self.backward_D()
        self.optimizer_D.step()


class Trainer:
    def __init__(self):
        self.model = Pix2PixLikeModel()

    def train(self, dataset):
        for i, data in enumerate(dataset):
            self.model.set_input(data)
            self.model.optimize_parameters()
        return self.model.loss_G.item(), self.model.loss_D.item()


random.seed(0)
torch.manual_seed(0)
dataset = ({"A": torch.rand(4, 3, 16, 16), "B": torch.rand(4, 3, 16, 16)} for _ in range(40))
print("losses G, D:", Trainer().train(dataset))
