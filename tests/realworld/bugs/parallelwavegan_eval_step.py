# Source: https://github.com/kan-bayashi/ParallelWaveGAN/pull/26 ("Add torch.no_grad() in evaluation";
# reported in https://github.com/kan-bayashi/ParallelWaveGAN/issues/1: OOM once training reaches the
# eval interval, "I forgot to add torch.no_grad() in evaluation, causing additional memory consuming")
# Bug: `Trainer._eval_epoch()` (run every `eval_interval_steps` training steps) sets the models to
# eval() and calls `self._eval_step(batch)` with grad mode on: the generator and discriminator
# forwards of every dev batch record a graph that is never back-propagated (losses only `.item()`).
# Fix: `with torch.no_grad(): self._eval_step(batch)` in `_eval_epoch()`.
# Expected finding: missing-no-grad at `y_ = self.model["generator"](z, c)` in `_eval_step()`.
from collections import defaultdict

import torch
import torch.nn.functional as F


def stft(x, fft_size, hop_size, win_length, window):
    x_stft = torch.stft(x, fft_size, hop_size, win_length, window, return_complex=True)
    real, imag = x_stft.real, x_stft.imag
    return torch.sqrt(torch.clamp(real ** 2 + imag ** 2, min=1e-7)).transpose(2, 1)


class STFTLoss(torch.nn.Module):
    def __init__(self, fft_size=128, shift_size=32, win_length=96):
        super().__init__()
        self.fft_size, self.shift_size, self.win_length = fft_size, shift_size, win_length
        self.window = torch.hann_window(win_length)

    def forward(self, x, y):
        x_mag = stft(x, self.fft_size, self.shift_size, self.win_length, self.window)
        y_mag = stft(y, self.fft_size, self.shift_size, self.win_length, self.window)
        sc_loss = torch.norm(y_mag - x_mag, p="fro") / torch.norm(y_mag, p="fro")
        mag_loss = F.l1_loss(torch.log(y_mag), torch.log(x_mag))
        return sc_loss, mag_loss


class ParallelWaveGANGenerator(torch.nn.Module):
    def __init__(self, aux_channels=20, channels=32, layers=6, hop_size=16):
        super().__init__()
        self.upsample = torch.nn.Upsample(scale_factor=hop_size)
        self.first = torch.nn.Conv1d(1, channels, 1)
        self.aux = torch.nn.Conv1d(aux_channels, channels, 1)
        self.convs = torch.nn.ModuleList(
            [torch.nn.Conv1d(channels, channels, 3, padding=2 ** (i % 3), dilation=2 ** (i % 3)) for i in range(layers)])
        self.last = torch.nn.Conv1d(channels, 1, 1)

    def forward(self, z, c):
        x = self.first(z)
        c = self.aux(self.upsample(c))
        for conv in self.convs:
            x = x + torch.tanh(conv(x) + c)
        return self.last(x)


class ParallelWaveGANDiscriminator(torch.nn.Module):
    def __init__(self, channels=32, layers=4):
        super().__init__()
        convs = [torch.nn.Conv1d(1, channels, 3, padding=1), torch.nn.LeakyReLU(0.2)]
        for _ in range(layers - 2):
            convs += [torch.nn.Conv1d(channels, channels, 3, padding=1), torch.nn.LeakyReLU(0.2)]
        convs += [torch.nn.Conv1d(channels, 1, 3, padding=1)]
        self.conv_layers = torch.nn.Sequential(*convs)

    def forward(self, x):
        return self.conv_layers(x)


class Trainer(object):
    """Customized trainer module for Parallel WaveGAN training."""

    def __init__(self, steps, epochs, data_loader, model, criterion, optimizer, scheduler, config,
                 device=torch.device("cpu")):
        self.steps = steps
        self.epochs = epochs
        self.data_loader = data_loader
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.config = config
        self.device = device
        self.finish_train = False
        self.total_train_loss = defaultdict(float)
        self.total_eval_loss = defaultdict(float)

    def run(self):
        while True:
            self._train_epoch()
            if self.finish_train:
                break

    def _train_step(self, batch):
        batch = [b.to(self.device) for b in batch]
        z, c, y, _ = batch

        # calculate loss for generator
        y_ = self.model["generator"](z, c)
        y, y_ = y.squeeze(1), y_.squeeze(1)
        sc_loss, mag_loss = self.criterion["stft"](y_, y)
        gen_loss = sc_loss + mag_loss
        if self.steps > self.config["discriminator_train_start_steps"]:
            p_ = self.model["discriminator"](y_.unsqueeze(1)).squeeze(1)
            adv_loss = self.criterion["mse"](p_, p_.new_ones(p_.size()))
            gen_loss += self.config["lambda_adv"] * adv_loss
            self.total_train_loss["train/adversarial_loss"] += adv_loss.item()
        self.total_train_loss["train/spectral_convergence_loss"] += sc_loss.item()
        self.total_train_loss["train/log_stft_magnitude_loss"] += mag_loss.item()
        self.total_train_loss["train/generator_loss"] += gen_loss.item()

        # update generator
        self.optimizer["generator"].zero_grad()
        gen_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model["generator"].parameters(), self.config["generator_grad_norm"])
        self.optimizer["generator"].step()
        self.scheduler["generator"].step()

        if self.steps > self.config["discriminator_train_start_steps"]:
            # calculate discriminator loss
            p = self.model["discriminator"](y.unsqueeze(1)).squeeze(1)
            p_ = self.model["discriminator"](y_.unsqueeze(1).detach()).squeeze(1)
            real_loss = self.criterion["mse"](p, p.new_ones(p.size()))
            fake_loss = self.criterion["mse"](p_, p_.new_zeros(p_.size()))
            dis_loss = real_loss + fake_loss
            self.total_train_loss["train/discriminator_loss"] += dis_loss.item()

            # update discriminator
            self.optimizer["discriminator"].zero_grad()
            dis_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model["discriminator"].parameters(),
                                           self.config["discriminator_grad_norm"])
            self.optimizer["discriminator"].step()
            self.scheduler["discriminator"].step()

        self.steps += 1

    def _train_epoch(self):
        for train_steps_per_epoch, batch in enumerate(self.data_loader["train"], 1):
            self._train_step(batch)

            # check interval
            self._check_log_interval()
            self._check_eval_interval()
            self._check_train_finish()

            if self.finish_train:
                return
        self.epochs += 1

    def _eval_step(self, batch):
        """Evaluate model one step."""
        batch = [b.to(self.device) for b in batch]
        z, c, y, _ = batch

        # calculate generator loss
        y_ = self.model["generator"](z, c)  # EXPECT: missing-no-grad
        p_ = self.model["discriminator"](y_)
        y, y_, p_ = y.squeeze(1), y_.squeeze(1), p_.squeeze(1)
        adv_loss = self.criterion["mse"](p_, p_.new_ones(p_.size()))
        sc_loss, mag_loss = self.criterion["stft"](y_, y)
        aux_loss = sc_loss + mag_loss
        gen_loss = aux_loss + self.config["lambda_adv"] * adv_loss

        # train discriminator
        p = self.model["discriminator"](y.unsqueeze(1)).squeeze(1)
        p_ = self.model["discriminator"](y_.unsqueeze(1)).squeeze(1)
        real_loss = self.criterion["mse"](p, p.new_ones(p.size()))
        fake_loss = self.criterion["mse"](p_, p_.new_zeros(p_.size()))
        dis_loss = real_loss + fake_loss

        # add to total eval loss
        self.total_eval_loss["eval/adversarial_loss"] += adv_loss.item()
        self.total_eval_loss["eval/spectral_convergence_loss"] += sc_loss.item()
        self.total_eval_loss["eval/log_stft_magnitude_loss"] += mag_loss.item()
        self.total_eval_loss["eval/generator_loss"] += gen_loss.item()
        self.total_eval_loss["eval/real_loss"] += real_loss.item()
        self.total_eval_loss["eval/fake_loss"] += fake_loss.item()
        self.total_eval_loss["eval/discriminator_loss"] += dis_loss.item()

    def _eval_epoch(self):
        """Evaluate model one epoch."""
        for key in self.model.keys():
            self.model[key].eval()

        # calculate loss for each batch
        for eval_steps_per_epoch, batch in enumerate(self.data_loader["dev"], 1):
            # eval one step
            self._eval_step(batch)

        for key in self.total_eval_loss.keys():
            self.total_eval_loss[key] /= eval_steps_per_epoch
        print(f"(steps: {self.steps}) eval/generator_loss = {self.total_eval_loss['eval/generator_loss']:.4f}")
        self.total_eval_loss = defaultdict(float)

        for key in self.model.keys():
            self.model[key].train()

    def _check_eval_interval(self):
        if self.steps % self.config["eval_interval_steps"] == 0:
            self._eval_epoch()

    def _check_log_interval(self):
        if self.steps % self.config["log_interval_steps"] == 0:
            self.total_train_loss = defaultdict(float)

    def _check_train_finish(self):
        if self.steps >= self.config["train_max_steps"]:
            self.finish_train = True


def make_batch(batch_size=4, frames=32, hop_size=16, aux_channels=20):
    c = torch.randn(batch_size, aux_channels, frames)
    y = torch.sin(torch.linspace(0, 200, frames * hop_size)).repeat(batch_size, 1, 1) * 0.5
    y = y + 0.05 * torch.randn_like(y)
    z = torch.randn(batch_size, 1, frames * hop_size)
    return z, c, y, torch.full((batch_size,), frames * hop_size)


torch.manual_seed(0)
config = {"discriminator_train_start_steps": 5, "lambda_adv": 4.0, "generator_grad_norm": 10,
          "discriminator_grad_norm": 1, "eval_interval_steps": 10, "log_interval_steps": 5,
          "train_max_steps": 30}
model = {"generator": ParallelWaveGANGenerator(), "discriminator": ParallelWaveGANDiscriminator()}
criterion = {"stft": STFTLoss(), "mse": torch.nn.MSELoss()}
optimizer = {"generator": torch.optim.Adam(model["generator"].parameters(), lr=1e-3),
             "discriminator": torch.optim.Adam(model["discriminator"].parameters(), lr=5e-4)}
scheduler = {key: torch.optim.lr_scheduler.StepLR(opt, step_size=200000, gamma=0.5) for key, opt in optimizer.items()}
data_loader = {"train": [make_batch() for _ in range(12)], "dev": [make_batch() for _ in range(4)]}
trainer = Trainer(steps=0, epochs=0, data_loader=data_loader, model=model, criterion=criterion,
                  optimizer=optimizer, scheduler=scheduler, config=config)
trainer.run()
print(f"finished training at {trainer.steps} steps")
