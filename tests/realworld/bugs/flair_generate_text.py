# Source: https://github.com/flairNLP/flair/issues/210 ("Add torch.no_grad() to LanguageModel.generate_text()",
# fixed in pull request #214; the loop comes from https://github.com/flairNLP/flair/issues/167)
# Bug: `LanguageModel.generate_text()` samples one character per step with grad mode on. Each
# `self.forward(input, hidden)` records a graph, and the LSTM `hidden` it returns is fed to the next
# step, so the graph of all previous steps stays reachable and grows with every generated character
# ("to avoid out of memory issues"). Nothing ever back-propagates through it.
# Fix: run the body of `generate_text()` under `with torch.no_grad():`.
# Expected finding: missing-no-grad at `prediction, rnn_output, hidden = self.forward(input, hidden)`
# in generate_text().
import math

import torch
import torch.nn as nn
from torch.autograd import Variable


class Dictionary:
    def __init__(self, text):
        self.idx2item = sorted({ch.encode("utf-8") for ch in text})
        self.item2idx = {item: i for i, item in enumerate(self.idx2item)}

    def get_idx_for_item(self, item):
        return self.item2idx[item.encode("utf-8")]

    def __len__(self):
        return len(self.idx2item)


class LanguageModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder."""

    def __init__(self, dictionary, is_forward_lm, hidden_size, nlayers, embedding_size=100, nout=None, dropout=0.5):
        super(LanguageModel, self).__init__()
        self.dictionary = dictionary
        self.is_forward_lm = is_forward_lm
        self.dropout = dropout
        self.hidden_size = hidden_size
        self.embedding_size = embedding_size
        self.nlayers = nlayers

        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(len(dictionary), embedding_size)
        if nlayers == 1:
            self.rnn = nn.LSTM(embedding_size, hidden_size, nlayers)
        else:
            self.rnn = nn.LSTM(embedding_size, hidden_size, nlayers, dropout=dropout)
        self.hidden = None
        self.nout = nout
        if nout is not None:
            self.proj = nn.Linear(hidden_size, nout)
            self.initialize(self.proj.weight)
            self.decoder = nn.Linear(nout, len(dictionary))
        else:
            self.proj = None
            self.decoder = nn.Linear(hidden_size, len(dictionary))
        self.init_weights()

    def init_weights(self):
        initrange = 0.1
        self.encoder.weight.data.uniform_(-initrange, initrange)
        self.decoder.bias.data.fill_(0)
        self.decoder.weight.data.uniform_(-initrange, initrange)

    def forward(self, input, hidden, ordered_sequence_lengths=None):
        encoded = self.encoder(input)
        emb = self.drop(encoded)
        self.rnn.flatten_parameters()
        output, hidden = self.rnn(emb, hidden)
        if self.proj is not None:
            output = self.proj(output)
        output = self.drop(output)
        decoded = self.decoder(output.view(output.size(0) * output.size(1), output.size(2)))
        return decoded.view(output.size(0), output.size(1), decoded.size(1)), output, hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters()).data
        return (Variable(weight.new(self.nlayers, bsz, self.hidden_size).zero_()),
                Variable(weight.new(self.nlayers, bsz, self.hidden_size).zero_()))

    def repackage_hidden(self, h):
        """Wraps hidden states in new Variables, to detach them from their history."""
        if type(h) == torch.Tensor:
            return Variable(h.data)
        else:
            return tuple(self.repackage_hidden(v) for v in h)

    def initialize(self, matrix):
        in_, out_ = matrix.size()
        stdv = math.sqrt(3. / (in_ + out_))
        matrix.data.uniform_(-stdv, stdv)

    def generate_text(self, number_of_characters=1000) -> str:
        characters = []

        idx2item = self.dictionary.idx2item

        # initial hidden state
        hidden = self.init_hidden(1)
        input = torch.rand(1, 1).mul(len(idx2item)).long()

        for i in range(number_of_characters):
            prediction, rnn_output, hidden = self.forward(input, hidden)  # EXPECT: missing-no-grad
            word_weights = prediction.squeeze().data.div(1.0).exp().cpu()
            word_idx = torch.multinomial(word_weights, 1)[0]
            input.data.fill_(word_idx)
            word = idx2item[word_idx].decode('UTF-8')
            characters.append(word)

        return ''.join(characters)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()


torch.manual_seed(0)
text = "the quick brown fox jumps over the lazy dog. " * 60
dictionary = Dictionary(text)
model = LanguageModel(dictionary, is_forward_lm=True, hidden_size=128, nlayers=1, embedding_size=32, dropout=0.1)
data = batchify(torch.tensor([dictionary.get_idx_for_item(ch) for ch in text]), 16)
optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
loss_function = nn.CrossEntropyLoss()
sequence_length = 25

# train the language model with truncated back-propagation through time
model.train()
for epoch in range(3):
    hidden = model.init_hidden(16)
    for i in range(0, data.size(0) - 1, sequence_length):
        seq_len = min(sequence_length, data.size(0) - 1 - i)
        inputs, targets = data[i:i + seq_len], data[i + 1:i + 1 + seq_len].view(-1)
        hidden = model.repackage_hidden(hidden)
        model.zero_grad()
        output, rnn_output, hidden = model.forward(inputs, hidden)
        loss = loss_function(output.view(-1, len(dictionary)), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
    print(f"epoch {epoch}: loss {loss.item():.3f}")

model.eval()
text = model.generate_text(number_of_characters=400)
print(f"generated {len(text)} characters: {text[:40]!r}")
