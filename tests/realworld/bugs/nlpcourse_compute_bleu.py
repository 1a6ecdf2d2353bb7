# Source: https://github.com/yandexdataschool/nlp_course/pull/66 ("Bug - need no_grad() to bleu computation,
# otherwise huge memory consumption"; commit c1e480c "added no_grad() to bleu computation")
# Bug: in the week-4 seq2seq homework, the training loop scores the dev set every 100 steps with
# `compute_bleu`, which greedily translates all dev lines with `model.translate_lines` outside any
# `torch.no_grad()`: the encoder and up to `max_len` decoder steps over the whole dev set record a
# graph (plus the list of all decoder states returned with the translations) that nobody
# back-propagates. "Huge memory consumption leads to OOM ... it takes a lot of time to find this."
# Fix (the commit): the body of `compute_bleu` runs under `with torch.no_grad():`.
# Expected finding: missing-no-grad at `translations, _ = model.translate_lines(inp_lines, **flags)`.
import math
import random
from collections import Counter
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

device = 'cpu'


class Vocab:
    def __init__(self, tokens, bos="_BOS_", eos="_EOS_", unk='_UNK_'):
        self.tokens = tokens
        self.token_to_ix = {t: i for i, t in enumerate(tokens)}
        self.bos, self.eos, self.unk = bos, eos, unk
        self.bos_ix = self.token_to_ix[bos]
        self.eos_ix = self.token_to_ix[eos]
        self.unk_ix = self.token_to_ix[unk]

    def __len__(self):
        return len(self.tokens)

    @staticmethod
    def from_lines(lines, bos="_BOS_", eos="_EOS_", unk='_UNK_'):
        flat_lines = '\n'.join(list(lines)).split()
        tokens = sorted(set(flat_lines))
        tokens = [t for t in tokens if t not in (bos, eos, unk) and len(t)]
        return Vocab([bos, eos, unk] + tokens, bos, eos, unk)

    def tokenize(self, string):
        tokens = [tok if tok in self.token_to_ix else self.unk for tok in string.split()]
        return [self.bos] + tokens + [self.eos]

    def to_matrix(self, lines, dtype=torch.int64, max_len=None):
        lines = list(map(self.tokenize, lines))
        max_len = max_len or max(map(len, lines))
        matrix = torch.full((len(lines), max_len), self.eos_ix, dtype=dtype)
        for i, seq in enumerate(lines):
            row_ix = list(map(self.token_to_ix.get, seq))[:max_len]
            matrix[i, :len(row_ix)] = torch.as_tensor(row_ix)
        return matrix

    def to_lines(self, matrix, crop=True):
        lines = []
        for line_ix in map(list, matrix):
            if crop:
                if line_ix[0] == self.bos_ix:
                    line_ix = line_ix[1:]
                if self.eos_ix in line_ix:
                    line_ix = line_ix[:line_ix.index(self.eos_ix)]
            lines.append(' '.join(self.tokens[i] for i in line_ix))
        return lines

    def compute_mask(self, input_ix):
        """ compute a boolean mask that equals "1" until first EOS (including that EOS) """
        return F.pad(torch.cumsum(input_ix == self.eos_ix, dim=-1)[..., :-1] < 1, pad=(1, 0, 0, 0), value=True)


def corpus_bleu(list_of_references, hypotheses, smoothing_function, max_n=4):
    """Stand-in for nltk.translate.bleu_score.corpus_bleu (uniform weights, closest-ref brevity penalty)."""
    numerators, denominators = Counter(), Counter()
    hyp_len = ref_len = 0
    for references, hypothesis in zip(list_of_references, hypotheses):
        for n in range(1, max_n + 1):
            hyp = Counter(tuple(hypothesis[i:i + n]) for i in range(len(hypothesis) - n + 1))
            ref = Counter(tuple(references[0][i:i + n]) for i in range(len(references[0]) - n + 1))
            numerators[n] += sum(min(c, ref[g]) for g, c in hyp.items())
            denominators[n] += max(1, sum(hyp.values()))
        hyp_len += len(hypothesis)
        ref_len += len(references[0])
    precisions = [Fraction(numerators[n], denominators[n], _normalize=False) for n in range(1, max_n + 1)]
    precisions = smoothing_function(precisions)
    if min(precisions) <= 0:
        return 0.0
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / max(hyp_len, 1))
    return bp * math.exp(sum(math.log(p) for p in precisions) / max_n)


class BasicModel(nn.Module):
    def __init__(self, inp_voc, out_voc, emb_size=64, hid_size=128):
        """
        A simple encoder-decoder seq2seq model
        """
        super().__init__()
        self.inp_voc, self.out_voc = inp_voc, out_voc
        self.hid_size = hid_size
        self.emb_inp = nn.Embedding(len(inp_voc), emb_size)
        self.emb_out = nn.Embedding(len(out_voc), emb_size)
        self.enc0 = nn.GRU(emb_size, hid_size, batch_first=True)
        self.dec_start = nn.Linear(hid_size, hid_size)
        self.dec0 = nn.GRUCell(emb_size, hid_size)
        self.logits = nn.Linear(hid_size, len(out_voc))

    def forward(self, inp, out):
        """ Apply model in training mode """
        initial_state = self.encode(inp)
        return self.decode(initial_state, out)

    def encode(self, inp, **flags):
        inp_emb = self.emb_inp(inp)
        enc_seq, [last_state_but_not_really] = self.enc0(inp_emb)
        lengths = (inp != self.inp_voc.eos_ix).to(torch.int64).sum(dim=1).clamp_max(inp.shape[1] - 1)
        last_state = enc_seq[torch.arange(len(enc_seq)), lengths]
        dec_start = self.dec_start(last_state)
        return [dec_start]

    def decode_step(self, prev_state, prev_tokens, **flags):
        prev_gru0_state = prev_state[0]
        new_dec_state = self.dec0(self.emb_out(prev_tokens), prev_gru0_state)
        output_logits = self.logits(new_dec_state)
        return [new_dec_state], output_logits

    def decode(self, initial_state, out_tokens, **flags):
        """ Iterate over reference tokens (out_tokens) with decode_step """
        batch_size = out_tokens.shape[0]
        state = initial_state
        onehot_bos = F.one_hot(torch.full([batch_size], self.out_voc.bos_ix, dtype=torch.int64),
                               num_classes=len(self.out_voc)).to(device=out_tokens.device)
        first_logits = torch.log(onehot_bos.to(torch.float32) + 1e-9)
        logits_sequence = [first_logits]
        for i in range(out_tokens.shape[1] - 1):
            state, logits = self.decode_step(state, out_tokens[:, i])
            logits_sequence.append(logits)
        return torch.stack(logits_sequence, dim=1)

    def decode_inference(self, initial_state, max_len=100, **flags):
        """ Generate translations from model (greedy version) """
        batch_size, device = len(initial_state[0]), initial_state[0].device
        state = initial_state
        outputs = [torch.full([batch_size], self.out_voc.bos_ix, dtype=torch.int64, device=device)]
        all_states = [initial_state]
        for i in range(max_len):
            state, logits = self.decode_step(state, outputs[-1])
            outputs.append(logits.argmax(dim=-1))
            all_states.append(state)
        return torch.stack(outputs, dim=1), all_states

    def translate_lines(self, inp_lines, **kwargs):
        inp = inp_voc.to_matrix(inp_lines).to(device)
        initial_state = self.encode(inp)
        out_ids, states = self.decode_inference(initial_state, **kwargs)
        return out_voc.to_lines(out_ids.cpu().numpy()), states


def compute_loss(model, inp, out, **flags):
    mask = model.out_voc.compute_mask(out)  # [batch_size, out_len]
    logits_seq = model(inp, out)
    logprobs_seq = torch.log_softmax(logits_seq, dim=-1)
    logp_out = logprobs_seq.gather(-1, out[:, :, None]).squeeze(-1)
    return -(logp_out * mask).sum() / mask.sum()


def compute_bleu(model, inp_lines, out_lines, bpe_sep='@@ ', **flags):
    """
    Estimates corpora-level BLEU score of model's translations given inp and reference out
    """
    translations, _ = model.translate_lines(inp_lines, **flags)  # EXPECT: missing-no-grad
    translations = [line.replace(bpe_sep, '') for line in translations]
    return corpus_bleu(
        [[ref.split()] for ref in out_lines],
        [trans.split() for trans in translations],
        smoothing_function=lambda precisions, **kw: [p + 1.0 / p.denominator for p in precisions]
    ) * 100


# synthetic "ru -> en" corpus: each source word has a fixed translation, order is reversed
random.seed(42)
torch.manual_seed(42)
src_words = ['сл%d' % i for i in range(60)]
dictionary = {w: 'w%d' % ((7 * i) % 60) for i, w in enumerate(src_words)}
pairs = []
for _ in range(2300):
    src = random.choices(src_words, k=random.randint(3, 10))
    pairs.append((' '.join(src), ' '.join(dictionary[w] for w in reversed(src))))
train_inp, train_out = [p[0] for p in pairs[:2000]], [p[1] for p in pairs[:2000]]
dev_inp, dev_out = [p[0] for p in pairs[2000:]], [p[1] for p in pairs[2000:]]

inp_voc = Vocab.from_lines(train_inp)
out_voc = Vocab.from_lines(train_out)

metrics = {'train_loss': [], 'dev_bleu': []}
model = BasicModel(inp_voc, out_voc).to(device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
batch_size = 32

for _ in range(60):
    step = len(metrics['train_loss']) + 1
    batch_ix = [random.randrange(len(train_inp)) for _ in range(batch_size)]
    batch_inp = inp_voc.to_matrix([train_inp[i] for i in batch_ix]).to(device)
    batch_out = out_voc.to_matrix([train_out[i] for i in batch_ix]).to(device)

    loss_t = compute_loss(model, batch_inp, batch_out)
    opt.zero_grad()
    loss_t.backward()
    opt.step()

    metrics['train_loss'].append((step, loss_t.item()))

    if step % 20 == 0:
        metrics['dev_bleu'].append((step, compute_bleu(model, dev_inp, dev_out)))
        mean_loss = sum(l for _, l in metrics['train_loss'][-10:]) / 10
        print("step %d: mean loss=%.3f, dev bleu=%.2f" % (step, mean_loss, metrics['dev_bleu'][-1][1]), flush=True)
