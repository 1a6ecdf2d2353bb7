# Source: https://github.com/NVIDIA/DeepLearningExamples/issues/1102 ("RAM requirement for
# BERT/PyTorch Pretraining": memory "keeps growing"; fixed in pull request #1104)
# Bug: `take_training_step` accumulates the loss into the device-side statistic with
# `stats.device_stat('average_loss').add_(loss)`. The in-place add makes the stats tensor part of
# the graph ("`loss` is a part of the graph ... the previous loss tensors/graph are retained"),
# and the periodic `.zero_()` reset does not cut the chain: it only appends a node to it.
# Fix (the PR): `add_(loss.detach())`.
# Fixed twin: the statistic accumulates `loss.detach()`, as in the PR.
import argparse

import torch
from torch import nn


class BertPretrainingCriterion(torch.nn.Module):
    def __init__(self, vocab_size):
        super(BertPretrainingCriterion, self).__init__()
        self.loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)
        self.vocab_size = vocab_size

    def forward(self, prediction_scores, seq_relationship_score, masked_lm_labels, next_sentence_labels):
        masked_lm_loss = self.loss_fn(prediction_scores.view(-1, self.vocab_size), masked_lm_labels.view(-1))
        next_sentence_loss = self.loss_fn(seq_relationship_score.view(-1, 2), next_sentence_labels.view(-1))
        total_loss = masked_lm_loss + next_sentence_loss
        return total_loss


class BertForPreTraining(nn.Module):
    """A one-layer stand-in for modeling.BertForPreTraining."""

    def __init__(self, vocab_size=128, hidden=64, max_len=32):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_len, hidden)
        self.token_type_embeddings = nn.Embedding(2, hidden)
        self.encoder = nn.TransformerEncoderLayer(hidden, 4, 2 * hidden, dropout=0.0, batch_first=True)
        self.cls_predictions = nn.Linear(hidden, vocab_size)
        self.cls_seq_relationship = nn.Linear(hidden, 2)

    def forward(self, input_ids, token_type_ids, attention_mask, masked_lm_labels=None):
        positions = torch.arange(input_ids.shape[1])
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return self.cls_predictions(x), self.cls_seq_relationship(x[:, 0])


class PolyWarmUpScheduler:
    """Linear warmup, then polynomial decay (stand-in for the repo's schedulers.PolyWarmUpScheduler)."""

    def __init__(self, optimizer, warmup, total_steps, degree=0.5):
        self.optimizer = optimizer
        self.warmup = warmup
        self.total_steps = total_steps
        self.degree = degree
        self.base_lrs = [group['lr'] for group in optimizer.param_groups]
        self.last_step = 0

    def step(self):
        self.last_step += 1
        progress = self.last_step / self.total_steps
        if progress < self.warmup:
            factor = progress / self.warmup
        else:
            factor = max(1.0 - progress, 0.0) ** self.degree
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group['lr'] = base_lr * factor


class SyncFreeStats :
    def __init__(self) :
        self.host_stats = {}
        self.device_stats = {}
        self.device_funcs = {}

    def add_stat(self, name, dtype=torch.int32, device_tensor=None, device_func=None) :
        if device_tensor is not None :
            assert dtype == device_tensor.dtype, "Error: dtype do not match: {} {}".format(dtype, device_tensor.dtype)
        self.host_stats[name] = torch.zeros(1, dtype=dtype)  # .pin_memory() in the original (CUDA)
        self.device_stats[name] = device_tensor
        self.device_funcs[name] = device_func

    def copy_from_device(self) :
        for name in self.host_stats.keys() :
            # Apply device function to device stat
            if self.device_stats[name] is not None and self.device_funcs[name] is not None:
                self.host_stats[name].copy_(self.device_funcs[name](self.device_stats[name]), non_blocking=True)
            elif self.device_stats[name] is not None :
                self.host_stats[name].copy_(self.device_stats[name], non_blocking=True)
            elif self.device_funcs[name] is not None :
                self.host_stats[name].copy_(self.device_funcs[name](), non_blocking=True)

    def host_stat(self, name) :
        assert name in self.host_stats
        return self.host_stats[name]

    def host_stat_value(self, name) :
        assert name in self.host_stats
        return self.host_stats[name].item()

    def device_stat(self, name) :
        assert self.device_stats[name] is not None
        return self.device_stats[name]


def take_training_step(args, grad_scaler, model, criterion, batch, stats):
    with torch.autocast("cpu", enabled=args.fp16):
        prediction_scores, seq_relationship_score = model(input_ids=batch['input_ids'], token_type_ids=batch['token_type_ids'], attention_mask=batch['attention_mask'], masked_lm_labels=batch['labels'])
        loss = criterion(prediction_scores, seq_relationship_score, batch['labels'], batch['next_sentence_labels'])

    stats.device_stat('average_loss').add_(loss.detach())
    grad_scaler.scale(loss).backward()


def take_optimizer_step(args, lr_scheduler, optimizer, grad_scaler, device, stats):
    lr_scheduler.step()  # learning rate warmup
    grad_scaler.step(optimizer)

    # Stats copying is located here prior to the infinity check being reset
    # in GradScaler::update()
    stats.copy_from_device()

    grad_scaler.update()
    optimizer.zero_grad(set_to_none=True)


def make_dataloader(args, vocab_size=128, seq_len=32, n_batches=40):
    g = torch.Generator().manual_seed(args.seed)
    for _ in range(n_batches):
        input_ids = torch.randint(1, vocab_size, (args.train_batch_size, seq_len), generator=g)
        labels = torch.full_like(input_ids, -1)
        masked = torch.rand(input_ids.shape, generator=g) < 0.15
        labels[masked] = input_ids[masked]
        input_ids[masked] = 0  # [MASK]
        yield {
            'input_ids': input_ids,
            'token_type_ids': (torch.arange(seq_len) >= seq_len // 2).long().expand_as(input_ids),
            'attention_mask': torch.ones_like(input_ids),
            'labels': labels,
            'next_sentence_labels': torch.randint(0, 2, (args.train_batch_size,), generator=g),
        }


def main():
    args = argparse.Namespace(seed=42, train_batch_size=16, gradient_accumulation_steps=1, log_freq=1,
                              learning_rate=1e-3, fp16=False)
    torch.manual_seed(args.seed)
    device = torch.device("cpu")
    model = BertForPreTraining()
    criterion = BertPretrainingCriterion(128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    lr_scheduler = PolyWarmUpScheduler(optimizer, warmup=0.1, total_steps=50)
    grad_scaler = torch.amp.GradScaler("cpu", enabled=args.fp16)

    stats = SyncFreeStats()
    # Host Only Stats
    stats.add_stat('model_step')
    # Device/Host Sync-ed Stats
    stats.add_stat('average_loss', dtype=torch.float32, device_tensor=torch.zeros(1, dtype=torch.float32, device=device))
    stats.add_stat('learning_rate', dtype=torch.float32, device_func=(lambda: torch.tensor(optimizer.param_groups[0]['lr'])))

    model.train()
    for step, batch in enumerate(make_dataloader(args)):
        stats.host_stat('model_step').add_(1)
        grad_accumulation_step = (stats.host_stat_value('model_step') % args.gradient_accumulation_steps) != 0

        take_training_step(args, grad_scaler, model, criterion, batch, stats)
        if not grad_accumulation_step:
            take_optimizer_step(args, lr_scheduler, optimizer, grad_scaler, device, stats)

        # Log Optimizer Step
        if not grad_accumulation_step:
            static_optimizer_step = stats.host_stat_value('model_step') // args.gradient_accumulation_steps
            no_log_steps = static_optimizer_step % args.log_freq
            if no_log_steps == 0:
                if static_optimizer_step % 10 == 0:
                    print({"step": static_optimizer_step,
                           "average_loss": stats.host_stat_value('average_loss') / (args.log_freq * args.gradient_accumulation_steps),
                           "learning_rate": stats.host_stat_value('learning_rate')})
                stats.device_stat('average_loss').zero_()


if __name__ == "__main__":
    main()
