# Source: https://github.com/clovaai/overhaul-distillation/issues/34 ("torch.no_grad() is impotant?":
# the teacher pass in CIFAR-100/distiller.py runs without no_grad; the maintainer agrees that
# `no_grad()` "is a good and efficient way to get teacher's representation")
# Bug: `Distiller.forward()` runs the frozen teacher (`t_net`, kept in train mode for its BatchNorm,
# its parameters still requiring grad) with grad mode on. Its features are only used as
# `t_feats[i].detach()` targets and `t_out` is dropped, so the teacher's whole graph is recorded on
# every training step and never back-propagated.
# Fix: `with torch.no_grad(): t_feats, t_out = self.t_net.extract_feature(x, preReLU=True)`.
# Fixed twin: the teacher pass runs under no_grad.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def distillation_loss(source, target, margin):
    target = torch.max(target, margin)
    loss = torch.nn.functional.mse_loss(source, target, reduction="none")
    loss = loss * ((source > target) | (target > 0)).float()
    return loss.sum()


def build_feature_connector(t_channel, s_channel):
    C = [nn.Conv2d(s_channel, t_channel, kernel_size=1, stride=1, padding=0, bias=False),
         nn.BatchNorm2d(t_channel)]
    for m in C:
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2. / n))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
    return nn.Sequential(*C)


def norm_cdf(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def get_margin_from_BN(bn):
    margin = []
    std = bn.weight.data
    mean = bn.bias.data
    for (s, m) in zip(std, mean):
        s = abs(s.item())
        m = m.item()
        if norm_cdf(-m / s) > 0.001:
            margin.append(- s * math.exp(- (m / s) ** 2 / 2) / math.sqrt(2 * math.pi) / norm_cdf(-m / s) + m)
        else:
            margin.append(-3 * s)
    return torch.FloatTensor(margin).to(std.device)


class Distiller(nn.Module):
    def __init__(self, t_net, s_net):
        super(Distiller, self).__init__()

        t_channels = t_net.get_channel_num()
        s_channels = s_net.get_channel_num()

        self.Connectors = nn.ModuleList([build_feature_connector(t, s) for t, s in zip(t_channels, s_channels)])

        teacher_bns = t_net.get_bn_before_relu()
        margins = [get_margin_from_BN(bn) for bn in teacher_bns]
        for i, margin in enumerate(margins):
            self.register_buffer('margin%d' % (i+1), margin.unsqueeze(1).unsqueeze(2).unsqueeze(0).detach())

        self.t_net = t_net
        self.s_net = s_net

    def forward(self, x):

        with torch.no_grad():
            t_feats, t_out = self.t_net.extract_feature(x, preReLU=True)
        s_feats, s_out = self.s_net.extract_feature(x, preReLU=True)
        feat_num = len(t_feats)

        loss_distill = 0
        for i in range(feat_num):
            s_feats[i] = self.Connectors[i](s_feats[i])
            loss_distill += distillation_loss(s_feats[i], t_feats[i].detach(), getattr(self, 'margin%d' % (i+1))) \
                            / 2 ** (feat_num - i - 1)

        return s_out, loss_distill


class WideResNet(nn.Module):
    """A small stand-in for the paper's WideResNet: three stages, each ending in a BN before ReLU."""

    def __init__(self, widths, num_classes=100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, last = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(nn.Conv2d(last, width, 3, 1 if i == 0 else 2, 1, bias=False),
                                        nn.BatchNorm2d(width), nn.ReLU(),
                                        nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)))
            last = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(last, num_classes)
        self.widths = widths

    def get_channel_num(self):
        return list(self.widths)

    def get_bn_before_relu(self):
        return [stage[-1] for stage in self.stages]

    def extract_feature(self, x, preReLU=False):
        out = self.conv1(x)
        feats = []
        for stage in self.stages:
            out = stage(out)
            feats.append(out)
            out = F.relu(out)
        out = self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
        if not preReLU:
            feats = [F.relu(f) for f in feats]
        return feats, out

    def forward(self, x):
        return self.extract_feature(x)[1]


torch.manual_seed(0)
trainloader = [(torch.randn(32, 3, 24, 24), torch.randint(0, 100, (32,))) for _ in range(6)]
t_net, s_net = WideResNet([24, 48, 96]), WideResNet([12, 24, 48])

# the teacher is trained first (the paper loads a pretrained checkpoint)
optim_t = torch.optim.SGD(t_net.parameters(), lr=0.05, momentum=0.9)
for inputs, targets in trainloader:
    t_loss = F.cross_entropy(t_net(inputs), targets)
    optim_t.zero_grad()
    t_loss.backward()
    optim_t.step()

# Module for distillation
d_net = Distiller(t_net, s_net)
criterion_CE = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD([{'params': s_net.parameters()}, {'params': d_net.Connectors.parameters()}],
                            lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)


def train_with_distill(d_net, epoch):
    d_net.train()
    d_net.s_net.train()
    d_net.t_net.train()

    train_loss = 0
    correct = 0
    total = 0
    for batch_idx, (inputs, targets) in enumerate(trainloader):
        optimizer.zero_grad()

        batch_size = inputs.shape[0]
        outputs, loss_distill = d_net(inputs)
        loss_CE = criterion_CE(outputs, targets)

        loss = loss_CE + loss_distill.sum() / batch_size / 1000

        loss.backward()
        optimizer.step()

        train_loss += loss_CE.item()

        _, predicted = torch.max(outputs.data, 1)
        total += targets.size(0)
        correct += predicted.eq(targets.data).cpu().sum().float().item()

        b_idx = batch_idx
    print('epoch %d Loss: %.3f | Acc: %.3f%% (%d/%d)' % (epoch, train_loss / (b_idx + 1), 100. * correct / total,
                                                         correct, total))
    return train_loss / (b_idx + 1)


for epoch in range(3):
    train_loss = train_with_distill(d_net, epoch)
