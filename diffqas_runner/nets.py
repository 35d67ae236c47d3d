"""Small network builders shared by the targets (tasks) and the QT mapping model."""

from __future__ import annotations

import torch
from torch import nn


def mlp(widths: list[int], dtype: torch.dtype | None = None) -> nn.Sequential:
    """Linear layers with ReLU between them: MLP 784-128-64-2 is mlp([784, 128, 64, 2])."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ToolkitCNN(nn.Module):
    """The Quantum-Train toolkit's small image CNN (its MNIST / FashionMNIST appendix target):
    Conv2d(1, 8, 5) -> MaxPool(2) -> Conv2d(8, 12, 5) -> MaxPool(2) -> Linear(192, 20) -> Linear(20, K),
    with no activation but the max-pools, as the toolkit writes it. Ten classes: 6,690 weights
    (13 qubits). Takes flat (N, 784) images, as the classification task stores them."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, kernel_size=5)
        self.conv2 = nn.Conv2d(8, 12, kernel_size=5)
        self.fc1 = nn.Linear(12 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(self.conv1(x.view(-1, 1, 28, 28)), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(self.fc1(x.flatten(1)))


class LSTMRegressor(nn.Module):
    """One-layer LSTM with one bias per gate, then Linear(hidden -> 1) on the last hidden state.

    The paper's time-series target: hidden 20 gives 4*20*(1+20) + 4*20 + 21 = 1,781 parameters.
    Gate order is torch.nn.LSTM's (input, forget, cell, output), so `weight_ih`/`weight_hh`/`bias`
    load into nn.LSTM as weight_ih_l0/weight_hh_l0/bias_ih_l0 with bias_hh_l0 = 0.
    Its own parameters (not nn.LSTM's flattened ones), so `torch.func.functional_call` runs it on generated weights.

    `native` (set by run.build for runs on the native backend): run forward and backward as one call
    of the simulator's C++ kernel each way (kernel.lstm_regression, float64 sums) where the library is
    loaded, instead of torch's LSTM, whose dispatch is most of its cost at this size.
    """

    def __init__(self, input_size: int = 1, hidden: int = 20):
        super().__init__()
        self.hidden = hidden
        self.native = False
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden))
        self.bias = nn.Parameter(torch.empty(4 * hidden))
        self.head = nn.Linear(hidden, 1)
        bound = hidden**-0.5  # nn.LSTM's initialisation, for use without a generator
        for p in (self.weight_ih, self.weight_hh, self.bias):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, time, input_size) -> prediction (batch, 1), through torch's fused LSTM
        (`torch.lstm`, nn.LSTM's own function: about half the time of the cell written out in
        tensor operations, which it replaced in 0.2) with bias_hh = 0."""
        if self.native:  # imported here: a saved model evaluates without the quantum package
            from .quantum import kernel

            tensors = (x, self.weight_ih, self.weight_hh, self.bias, self.head.weight, self.head.bias)
            if kernel.lstm_takes(*tensors):
                return kernel.lstm_regression(*tensors)
        h0 = x.new_zeros(1, x.shape[0], self.hidden)
        weights = [self.weight_ih, self.weight_hh, self.bias, torch.zeros_like(self.bias)]
        out = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False, True)[0]
        return self.head(out[:, -1])
