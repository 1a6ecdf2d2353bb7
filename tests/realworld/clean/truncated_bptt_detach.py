# Pattern (word_language_model done right): the hidden state is carried across batches and
# detached at each one (truncated back-propagation through time). The state lives across steps
# but holds no graph. Expected: no finding.
import torch
from torch import nn

torch.manual_seed(0)
rnn, decoder = nn.GRU(12, 48), nn.Linear(48, 12)
optimizer = torch.optim.Adam([*rnn.parameters(), *decoder.parameters()], lr=1e-3)
stream = torch.randn(40 * 10 + 1, 4, 12).cumsum(dim=0) * 0.1
hidden = torch.zeros(1, 4, 48)
for i in range(0, 400, 10):
    hidden = hidden.detach()
    output, hidden = rnn(stream[i:i + 10], hidden)
    loss = nn.functional.mse_loss(decoder(output), stream[i + 1:i + 11])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.4f}")
