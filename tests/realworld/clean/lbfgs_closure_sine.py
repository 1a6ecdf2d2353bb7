# Pattern: LBFGS with a closure (modelled on https://github.com/pytorch/examples/blob/04b1f3cec923d40972d998a7ed3c00c1b37e765e/time_sequence_prediction/train.py)
# `optimizer.step(closure)` calls the closure several times per step; each call zeroes the grads,
# runs the two-LSTMCell model over the whole sequence, back-propagates and returns the loss tensor
# (LBFGS needs it, and keeps only `float(loss)`). The hidden states are re-created inside every
# forward. After each step the future is predicted under no_grad and the prediction is turned into
# a numpy array for the plot, replacing the previous one. Expected: no finding.
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim

H = 16


class Sequence(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm1 = nn.LSTMCell(1, H)
        self.lstm2 = nn.LSTMCell(H, H)
        self.linear = nn.Linear(H, 1)

    def forward(self, input, future=0):
        outputs = []
        h_t = torch.zeros(input.size(0), H, dtype=torch.double)
        c_t = torch.zeros(input.size(0), H, dtype=torch.double)
        h_t2 = torch.zeros(input.size(0), H, dtype=torch.double)
        c_t2 = torch.zeros(input.size(0), H, dtype=torch.double)
        for input_t in input.split(1, dim=1):
            h_t, c_t = self.lstm1(input_t, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        for i in range(future):  # if we should predict the future
            h_t, c_t = self.lstm1(output, (h_t, c_t))
            h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
            output = self.linear(h_t2)
            outputs += [output]
        return torch.cat(outputs, dim=1)


# generate_sine_wave.py, smaller: N sine waves of length L starting at random phases
np.random.seed(2)
T, L, N = 20, 30, 8
x = np.empty((N, L), "int64")
x[:] = np.array(range(L)) + np.random.randint(-4 * T, 4 * T, N).reshape(N, 1)
data = torch.from_numpy(np.sin(x / 1.0 / T).astype("float64"))

np.random.seed(0)
torch.manual_seed(0)
input, target = data[3:, :-1], data[3:, 1:]
test_input, test_target = data[:3, :-1], data[:3, 1:]
seq = Sequence().double()
criterion = nn.MSELoss()
# use LBFGS as optimizer since we can load the whole data to train
optimizer = optim.LBFGS(seq.parameters(), lr=0.8, max_iter=2)
for i in range(30):
    def closure():
        optimizer.zero_grad()
        out = seq(input)
        loss = criterion(out, target)
        loss.backward()
        return loss
    loss = optimizer.step(closure)
    # begin to predict, no need to track gradient here
    with torch.no_grad():
        future = 10
        pred = seq(test_input, future=future)
        test_loss = criterion(pred[:, :-future], test_target)
        y = pred.detach().numpy()
    if i % 10 == 0:
        print(f"STEP {i} loss {loss.item():.6f} test loss {test_loss.item():.6f}")
print(f"final test loss {test_loss.item():.6f} ({y.shape[1]} points predicted)")
