# Source: https://github.com/huggingface/transformers/pull/6999 (issue #6939)
# Bug: `Trainer.train()` sums `tr_loss += self.training_step(model, inputs)` into a tensor and
# `training_step` returns the loss with its graph: "some variables are kept forever for a
# backward pass that is never called"; 12 GB of RAM gone after ~20,000 steps.
# Fix: `training_step` returns `loss.detach()`.
# Expected finding: retained-graph at `tr_loss += self.training_step(model, inputs)`.
import torch
from torch import nn


class TinyLM(nn.Module):
    def __init__(self, vocab=64, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, input_ids, labels):
        logits = self.lm_head(self.mix(self.embed(input_ids)))
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1))
        return {"loss": loss, "logits": logits}


class TrainingArguments:
    gradient_accumulation_steps = 2
    max_grad_norm = 1.0
    logging_steps = 5
    learning_rate = 5e-4


class Trainer:
    def __init__(self, model, args, train_dataset):
        self.model, self.args, self.train_dataset = model, args, train_dataset
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
        self.global_step = 0

    def training_step(self, model, inputs):
        model.train()
        outputs = model(**inputs)
        loss = outputs["loss"]
        if self.args.gradient_accumulation_steps > 1:
            loss = loss / self.args.gradient_accumulation_steps
        loss.backward()
        return loss

    def train(self):
        model = self.model
        tr_loss = torch.tensor(0.0)
        logging_loss_scalar = 0.0
        model.zero_grad()
        for step, inputs in enumerate(self.train_dataset):
            tr_loss += self.training_step(model, inputs)  # EXPECT: retained-graph
            if (step + 1) % self.args.gradient_accumulation_steps == 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
                self.optimizer.step()
                model.zero_grad()
                self.global_step += 1
                if self.global_step % self.args.logging_steps == 0:
                    tr_loss_scalar = tr_loss.item()
                    print({"loss": (tr_loss_scalar - logging_loss_scalar) / self.args.logging_steps})
                    logging_loss_scalar = tr_loss_scalar
        return self.global_step, tr_loss.item() / self.global_step


torch.manual_seed(0)
dataset = [{"input_ids": torch.randint(0, 64, (8, 16)), "labels": torch.randint(0, 64, (8, 16))} for _ in range(60)]
print(Trainer(TinyLM(), TrainingArguments(), dataset).train())
