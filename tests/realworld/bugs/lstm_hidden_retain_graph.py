# Source: https://github.com/pytorch/pytorch/issues/2198 ("Memory leak problem in LSTM and RNN")
# Bug: the hidden state is carried from batch to batch without being detached, and the second
# backward's "Trying to backward through the graph a second time" error is silenced with
# `backward(retain_graph=True)`: `hidden` keeps the graph of the whole sequence seen so far, and
# every step back-propagates through all of it. The update is done by hand on `p.data`, as in
# the word_language_model example of the time.
# Fix: `hidden = repackage_hidden(hidden)` before each batch, and a plain `loss.backward()`.
# Expected finding: retained-graph at `output, hidden = model(data, hidden)`.
import torch
from torch import nn


class RNNModel(nn.Module):
    def __init__(self, ntoken=50, ninp=16, nhid=32):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid = nhid

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.encoder(input), hidden)
        return self.decoder(output), hidden

    def init_hidden(self, bsz):
        return (torch.zeros(1, bsz, self.nhid), torch.zeros(1, bsz, self.nhid))


def get_batch(source, i, bptt=8):
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


torch.manual_seed(0)
ntokens, batch_size, bptt, lr = 50, 4, 8, 0.5
train_data = torch.randint(0, ntokens, (8 * 40 + 1, batch_size))
model = RNNModel(ntokens)
criterion = nn.CrossEntropyLoss()
hidden = model.init_hidden(batch_size)
for batch, i in enumerate(range(0, train_data.size(0) - 1, bptt)):
    data, targets = get_batch(train_data, i, bptt)
    model.zero_grad()
    output, hidden = model(data, hidden)  # EXPECT: retained-graph
    loss = criterion(output.view(-1, ntokens), targets)
    loss.backward(retain_graph=True)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
print(f"batch {batch}: loss {loss.item():.3f}")
