# Source: https://github.com/thuml/AutoTimes/issues/21 ("Memory leakage in long term forecast"; fixed in
# commit 9ff9aac "fix exp_long_term_forecasting.py")
# Bug: AutoTimes forecasts time series with a frozen LLM between a trainable token encoder and
# decoder. `Exp_Long_Term_Forecast.train` keeps its epoch loss in a preallocated tensor,
# `loss_val = torch.tensor(0.)`, and adds `loss_val += loss`: the in-place add turns the running sum
# into a node of every batch's graph (the frozen LLM's activations included, since the gradient
# flows through it to the encoder). "The loss was being accumulated as a tensor instead of a scalar."
# Fix (the commit): `loss_val += loss.item()`.
# Expected finding: retained-graph at `loss_val += loss`.
import math
import time

import torch
import torch.nn as nn
from torch import optim


class FrozenCausalLM(nn.Module):
    """Stand-in for `LlamaForCausalLM(...).model`: a small causal transformer, all weights frozen."""

    def __init__(self, hidden=64, layers=2):
        super().__init__()
        layer = nn.TransformerEncoderLayer(hidden, nhead=4, dim_feedforward=2 * hidden, batch_first=True)
        self.layers = nn.TransformerEncoder(layer, layers)

    def forward(self, inputs_embeds):
        n = inputs_embeds.size(1)
        mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
        return (self.layers(inputs_embeds, mask=mask),)


class MLP(nn.Module):
    def __init__(self, f_in, f_out, hidden_dim=64, hidden_layers=1, dropout=0.1):
        super().__init__()
        layers = [nn.Linear(f_in, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
        for _ in range(hidden_layers - 1):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
        self.layers = nn.Sequential(*layers, nn.Linear(hidden_dim, f_out))

    def forward(self, x):
        return self.layers(x)


class Model(nn.Module):
    def __init__(self, configs):
        super().__init__()
        self.token_len = configs.token_len
        self.llama = FrozenCausalLM(configs.hidden_dim_of_llama)
        self.hidden_dim_of_llama = configs.hidden_dim_of_llama
        for name, param in self.llama.named_parameters():
            param.requires_grad = False
        self.encoder = MLP(self.token_len, self.hidden_dim_of_llama, configs.mlp_hidden_dim,
                           configs.mlp_hidden_layers, configs.dropout)
        self.decoder = MLP(self.hidden_dim_of_llama, self.token_len, configs.mlp_hidden_dim,
                           configs.mlp_hidden_layers, configs.dropout)

    def forecast(self, x_enc, x_mark_enc, x_dec, x_mark_dec):
        means = x_enc.mean(1, keepdim=True).detach()
        x_enc = x_enc - means
        stdev = torch.sqrt(torch.var(x_enc, dim=1, keepdim=True, unbiased=False) + 1e-5)
        x_enc /= stdev
        bs, _, n_vars = x_enc.shape
        x_enc = x_enc.permute(0, 2, 1)
        x_enc = x_enc.reshape(x_enc.shape[0] * x_enc.shape[1], -1)
        fold_out = x_enc.unfold(dimension=-1, size=self.token_len, step=self.token_len)
        token_num = fold_out.shape[1]
        times_embeds = self.encoder(fold_out)
        outputs = self.llama(inputs_embeds=times_embeds)[0]
        dec_out = self.decoder(outputs)
        dec_out = dec_out.reshape(bs, n_vars, -1)
        dec_out = dec_out.permute(0, 2, 1)
        dec_out = dec_out * (stdev[:, 0, :].unsqueeze(1).repeat(1, token_num * self.token_len, 1))
        dec_out = dec_out + (means[:, 0, :].unsqueeze(1).repeat(1, token_num * self.token_len, 1))
        return dec_out

    def forward(self, x_enc, x_mark_enc, x_dec, x_mark_dec):
        return self.forecast(x_enc, x_mark_enc, x_dec, x_mark_dec)


class Args:
    token_len = 8
    seq_len = 48
    hidden_dim_of_llama = 64
    mlp_hidden_dim = 64
    mlp_hidden_layers = 1
    dropout = 0.1
    learning_rate = 5e-4
    weight_decay = 0.0
    train_epochs = 3
    batch_size = 16
    use_amp = False
    use_multi_gpu = False
    cosine = True
    tmax = 10


def data_provider(args, flag, series):
    """Windows of a multivariate series: x = s[i:i+seq_len], y = s[i+token_len:i+seq_len+token_len]."""
    start, stop = {"train": (0, 700), "val": (700, 850), "test": (850, 1000)}[flag]
    part = series[start:stop]
    idx = list(range(0, len(part) - args.seq_len - args.token_len, 4))
    batches = []
    for b in range(0, len(idx), args.batch_size):
        chunk = idx[b:b + args.batch_size]
        x = torch.stack([part[i:i + args.seq_len] for i in chunk])
        y = torch.stack([part[i + args.token_len:i + args.seq_len + args.token_len] for i in chunk])
        mark = torch.zeros(len(chunk), args.seq_len // args.token_len, args.hidden_dim_of_llama)
        batches.append((x, y, mark, mark))
    return None, batches


class Exp_Long_Term_Forecast:
    def __init__(self, args, series):
        self.args = args
        self.device = torch.device("cpu")
        self.series = series
        self.model = Model(args).to(self.device)

    def _get_data(self, flag):
        return data_provider(self.args, flag, self.series)

    def _select_optimizer(self):
        p_list = [p for n, p in self.model.named_parameters() if p.requires_grad]
        return optim.Adam([{"params": p_list}], lr=self.args.learning_rate, weight_decay=self.args.weight_decay)

    def _select_criterion(self):
        return nn.MSELoss()

    def vali(self, vali_data, vali_loader, criterion, is_test=False):
        total_loss, total_count = [], []
        self.model.eval()
        with torch.no_grad():
            for i, (batch_x, batch_y, batch_x_mark, batch_y_mark) in enumerate(vali_loader):
                outputs = self.model(batch_x, batch_x_mark, None, batch_y_mark)
                if is_test:
                    outputs = outputs[:, -self.args.token_len:, :]
                    batch_y = batch_y[:, -self.args.token_len:, :]
                loss = criterion(outputs, batch_y)
                total_loss.append(loss.detach().cpu())
                total_count.append(batch_x.shape[0])
        total_loss = sum(l.item() * c for l, c in zip(total_loss, total_count)) / sum(total_count)
        self.model.train()
        return total_loss

    def train(self, setting):
        train_data, train_loader = self._get_data(flag="train")
        vali_data, vali_loader = self._get_data(flag="val")
        test_data, test_loader = self._get_data(flag="test")
        train_steps = len(train_loader)
        model_optim = self._select_optimizer()
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(model_optim, T_max=self.args.tmax, eta_min=1e-8)
        criterion = self._select_criterion()

        for epoch in range(self.args.train_epochs):
            iter_count = 0
            loss_val = torch.tensor(0., device=self.device)
            count = torch.tensor(0., device=self.device)
            self.model.train()
            epoch_time = time.time()
            for i, (batch_x, batch_y, batch_x_mark, batch_y_mark) in enumerate(train_loader):
                iter_count += 1
                model_optim.zero_grad()
                batch_x = batch_x.float().to(self.device)
                batch_y = batch_y.float().to(self.device)
                outputs = self.model(batch_x, batch_x_mark, None, batch_y_mark)
                loss = criterion(outputs, batch_y)
                loss_val += loss  # EXPECT: retained-graph
                count += 1
                if (i + 1) % 5 == 0:
                    print("\titers: {0}, epoch: {1} | loss: {2:.7f}".format(i + 1, epoch + 1, loss.item()))
                loss.backward()
                model_optim.step()
            print("Epoch: {} cost time: {:.2f}".format(epoch + 1, time.time() - epoch_time))
            train_loss = loss_val.item() / count.item()
            vali_loss = self.vali(vali_data, vali_loader, criterion)
            test_loss = self.vali(test_data, test_loader, criterion, is_test=True)
            print("Epoch: {}, Steps: {} | Train Loss: {:.7f} Vali Loss: {:.7f} Test Loss: {:.7f}".format(
                epoch + 1, train_steps, train_loss, vali_loss, test_loss))
            if self.args.cosine:
                scheduler.step()
        return self.model


torch.manual_seed(0)
t = torch.arange(1000, dtype=torch.float32)
series = torch.stack([torch.sin(2 * math.pi * t / p) for p in (24.0, 48.0, 168.0)], dim=1)
series = series + 0.1 * torch.randn_like(series)
Exp_Long_Term_Forecast(Args(), series).train("ETTh1_672_96_AutoTimes")
