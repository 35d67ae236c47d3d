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
