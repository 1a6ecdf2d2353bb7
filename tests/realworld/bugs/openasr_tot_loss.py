# Source: https://github.com/by2101/OpenASR/issues/12 ("训练的时候存在内存泄露": memory leak in training)
# Bug: `Trainer.iter_one_epoch` of the OpenASR speech recognizer sums the batch loss for logging as
# `tot_loss = tot_loss + batch_loss`, and `batch_loss` is the model's loss with its graph; it also
# hands `tot_loss` to the metric summarizer for "avg_token_loss". Host memory rose until the
# process died after ~2 hours on a 32 GB machine; the reporter found this line.
# Fix (the maintainer: "tot_loss is only for the log; add .item() to batch_loss"):
# `tot_loss = tot_loss + batch_loss.item()`.
# Expected finding: retained-graph at `tot_loss = tot_loss + batch_loss`.
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import clip_grad_norm_


class MetricSummarizer(object):
    def __init__(self):
        self.metrics = {}  # name: (loss, weight)
        self.metric_names = []
        self.summarized = {}

    def register_metric(self, name, display=False, visual=False, optim=False):
        self.metric_names.append({"name": name, "display": display, "visual": visual, "optim": optim})

    def reset_metrics(self):
        del self.metrics
        del self.summarized
        self.metrics = {}
        for item in self.metric_names:
            self.metrics[item["name"]] = None
        self.summarized = {}

    def update_metric(self, name, loss, weight=1.0):
        if name in self.metrics:
            self.metrics[name] = (loss, weight)
        else:
            raise ValueError("The metric {} is not registered.".format(name))

    def summarize(self):
        self.summarized = {}
        for key in self.metrics.keys():
            if self.metrics[key] is None:
                logging.warning("{} is not updated. Skip it.".format(key))
                continue
            item = self.metrics[key]
            self.summarized[key] = item[0] * item[1]

    def collect_loss(self):
        loss = 0
        for item in self.metric_names:
            key = item["name"]
            if item["optim"] == True:
                v = self.metrics[key]
                loss += v[0] * v[1]
        return loss

    def fetch_scalers(self, use="display"):
        return [(item["name"], self.summarized[item["name"]]) for item in self.metric_names
                if item[use] == True and item["name"] in self.summarized]

    def display_msg(self, fetched):
        parts = []
        for name, value in fetched:
            value = value.item() if isinstance(value, torch.Tensor) else value
            parts.append("{}: {:.4f}".format(name, value))
        return " | ".join(parts)


class SpeechTransformerStandIn(nn.Module):
    """Waveform -> frames -> encoder; teacher-forced decoder; per-utterance summed token loss."""

    def __init__(self, vocab=40, frame=160, dim=48):
        super().__init__()
        self.frame = frame
        self.sp_layer = nn.Sequential(nn.Linear(frame, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.encoder = nn.GRU(dim, dim, batch_first=True)
        self.embed = nn.Embedding(vocab, dim)
        self.decoder = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(2 * dim, vocab)

    def forward(self, padded_waveforms, wave_lengths, ids, labels, paddings, label_smooth=0.0,
                lst_w=0.0, lst_t=1.0):
        b, t = padded_waveforms.shape
        frames = padded_waveforms[:, : t // self.frame * self.frame].view(b, -1, self.frame)
        enc, _ = self.encoder(self.sp_layer(frames))
        dec, _ = self.decoder(self.embed(ids), enc.mean(1, keepdim=True).transpose(0, 1).contiguous())
        context = enc.mean(1, keepdim=True).expand(-1, dec.size(1), -1)
        logits = self.out(torch.cat([dec, context], -1))
        loss = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none",
                               label_smoothing=label_smooth)
        return (loss * (1 - paddings)).sum(1)


class Trainer(object):
    def __init__(self, model, config, tr_loader, cv_loader):
        self.config = config
        self.tr_loader, self.cv_loader = tr_loader, cv_loader
        self.model = model
        self.num_epoch = config["num_epoch"]
        self.print_inteval = config["print_inteval"]
        self.accumulate_grad_batch = config["accumulate_grad_batch"]
        self.init_lr = config["init_lr"]
        self.grad_max_norm = config["grad_max_norm"]
        self.label_smooth = config["label_smooth"]
        self.lst_w, self.lst_t = 0.0, 1.0
        self.metric_summarizer = MetricSummarizer()
        self.metric_summarizer.register_metric("per_token_loss", display=True, visual=True, optim=True)
        self.metric_summarizer.register_metric("avg_token_loss", display=True, visual=True, optim=False)
        self.metric_summarizer.register_metric("learning_rate", display=True, visual=True, optim=False)
        self.metric_summarizer.register_metric("sequence_per_sec", display=True, visual=True, optim=False)
        self.epoch = 0
        self.step = 0
        self.tr_loss = []
        self.cv_loss = []
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.init_lr, betas=(0.9, 0.999))

    def train(self):
        self.best_cvloss = 9e20
        while self.epoch < self.num_epoch:
            self.epoch += 1
            tr_loss = self.iter_one_epoch()
            cv_loss = self.iter_one_epoch(cross_valid=True)
            if self.best_cvloss > cv_loss:
                self.best_cvloss = cv_loss
            print("Epoch {} | tr loss: {:.4f} | cv loss: {:.4f} | best cv loss {:.4f}".format(
                self.epoch, tr_loss, cv_loss, self.best_cvloss))
            self.tr_loss.append(tr_loss)
            self.cv_loss.append(cv_loss)

    def iter_one_epoch(self, cross_valid=False):
        niter = 0
        if cross_valid:
            loader = self.cv_loader
            self.model.eval()
        else:
            loader = self.tr_loader
            self.model.train()
        tic = time.time()
        tot_loss = 0.
        tot_token = 0
        tot_sequence = 0
        n_accu_batch = self.accumulate_grad_batch
        loader_iter = iter(loader)
        tot_iter_num = len(loader)
        while True:
            try:
                data = next(loader_iter)
                niter += 1
            except StopIteration:
                break
            (utts, padded_waveforms, wave_lengths, ids, labels, paddings) = data
            if cross_valid:
                with torch.no_grad():
                    this_loss = self.model(padded_waveforms, wave_lengths, ids, labels, paddings)
            else:
                this_loss = self.model(padded_waveforms, wave_lengths, ids, labels, paddings,
                                       label_smooth=self.label_smooth, lst_w=self.lst_w, lst_t=self.lst_t)

            batch_loss = torch.sum(this_loss)
            n_token = torch.sum(1 - paddings).float()
            n_sequence = len(utts)

            tot_loss = tot_loss + batch_loss  # EXPECT: retained-graph
            tot_token = tot_token + n_token
            tot_sequence = tot_sequence + n_sequence

            self.metric_summarizer.reset_metrics()
            self.metric_summarizer.update_metric("per_token_loss", batch_loss, 1.0 / n_token)
            self.metric_summarizer.update_metric("avg_token_loss", tot_loss, 1.0 / tot_token)
            self.metric_summarizer.update_metric("learning_rate", list(self.optimizer.param_groups)[0]["lr"], 1.0)
            self.metric_summarizer.update_metric("sequence_per_sec", tot_sequence, 1.0 / (time.time() - tic))
            self.metric_summarizer.summarize()

            loss = self.metric_summarizer.collect_loss()
            loss = loss / self.accumulate_grad_batch

            if not cross_valid:
                if n_accu_batch == self.accumulate_grad_batch:
                    self.optimizer.zero_grad()
                loss.backward()
                n_accu_batch -= 1
                if n_accu_batch == 0 or niter == tot_iter_num:
                    self.step += 1
                    clip_grad_norm_(self.model.parameters(), self.grad_max_norm)
                    self.optimizer.step()
                    n_accu_batch = self.accumulate_grad_batch
                else:
                    continue

            if niter % self.print_inteval == 0:
                todisp = self.metric_summarizer.fetch_scalers(use="display")
                print("Epoch {} | Step {} | Iter {}: {}".format(
                    self.epoch, self.step, niter, self.metric_summarizer.display_msg(todisp)))

        self.metric_summarizer.reset_metrics()
        return tot_loss / tot_token


def make_loader(n_batches, batch_size=8, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(n_batches):
        wave_lengths = torch.randint(1200, 1920, (batch_size,), generator=g)
        padded_waveforms = torch.randn(batch_size, 1920, generator=g)
        for i, n in enumerate(wave_lengths.tolist()):
            padded_waveforms[i, n:] = 0.0
        label_len = torch.randint(6, 16, (batch_size,), generator=g)
        labels = torch.randint(3, vocab, (batch_size, 16), generator=g)
        paddings = (torch.arange(16)[None, :] >= label_len[:, None]).float()
        labels = labels * (1 - paddings).long()
        ids = torch.cat([torch.ones(batch_size, 1, dtype=torch.long), labels[:, :-1]], 1)
        utts = ["utt{}_{}".format(b, i) for i in range(batch_size)]
        batches.append((utts, padded_waveforms, wave_lengths, ids, labels, paddings))
    return batches


torch.manual_seed(0)
config = {"num_epoch": 2, "print_inteval": 8, "accumulate_grad_batch": 1, "init_lr": 1e-3,
          "grad_max_norm": 50.0, "label_smooth": 0.1}
trainer = Trainer(SpeechTransformerStandIn(), config, make_loader(16, seed=1), make_loader(4, seed=2))
trainer.train()
