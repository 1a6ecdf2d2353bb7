# Source: https://github.com/BatsResearch/labelmodels/issues/4
# Bug: the label model's `_do_estimate` adds the loss tensor itself to `running_loss`, so every
# batch's autograd graph of the epoch stays alive ("for a large enough training set my GPU runs
# out of memory"). Fix: `running_loss += loss.item()`.
# Expected finding: retained-graph at the `running_loss += loss` line.
import torch
from torch import nn


class NaiveBayesLabelModel(nn.Module):
    """Weak-supervision label model: votes of m labeling functions -> k classes."""

    def __init__(self, num_classes: int, num_lfs: int):
        super().__init__()
        self.class_balance = nn.Parameter(torch.zeros(num_classes))
        self.accuracy = nn.Parameter(torch.full((num_lfs,), 0.7))
        self.num_classes = num_classes

    def forward(self, votes: torch.Tensor) -> torch.Tensor:
        # votes: (n, m) in {0 (abstain), 1..k}
        prior = torch.log_softmax(self.class_balance, dim=0)
        acc = torch.sigmoid(self.accuracy)
        scores = []
        for c in range(1, self.num_classes + 1):
            agree = (votes == c).float() * torch.log(acc)
            disagree = ((votes != c) & (votes != 0)).float() * torch.log((1 - acc) / (self.num_classes - 1))
            scores.append(prior[c - 1] + (agree + disagree).sum(dim=1))
        return torch.logsumexp(torch.stack(scores, dim=1), dim=1)

    def _get_regularization_loss(self) -> torch.Tensor:
        return 0.01 * (self.accuracy ** 2).sum()

    def _do_estimate(self, batches, epochs: int = 1, lr: float = 0.05) -> None:
        optimizer = torch.optim.SGD(self.parameters(), lr=lr)
        for epoch in range(epochs):
            running_loss = 0.0
            for votes in batches:
                optimizer.zero_grad()
                log_likelihood = self(votes)
                loss = -1 * torch.mean(log_likelihood)
                loss += self._get_regularization_loss()
                loss.backward()
                optimizer.step()
                running_loss += loss  # EXPECT: retained-graph
            print(f"epoch {epoch}: loss {running_loss / len(batches):.4f}")


torch.manual_seed(0)
batches = [torch.randint(0, 4, (256, 12)) for _ in range(40)]
NaiveBayesLabelModel(num_classes=3, num_lfs=12)._do_estimate(batches)
