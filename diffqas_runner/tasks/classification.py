"""Binary image classification (MNIST / FashionMNIST, two classes relabelled 0/1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..nets import mlp

DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


class DataError(RuntimeError):
    """The dataset is missing or unreadable; the message names the path and the fix."""


@dataclass
class Split:
    x: torch.Tensor  # (N, 784) float32, normalised to [-1, 1]
    y: torch.Tensor  # (N,) int64 in {0, 1}


def load_split(dataset: str, data_dir: str | Path, train: bool, classes: tuple[int, int], download: bool) -> Split:
    """The two classes of one split as in-memory tensors (ToTensor then Normalize(0.5, 0.5))."""
    from torchvision import datasets

    cls = getattr(datasets, DATASETS[dataset])
    root = Path(data_dir)
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True ..."
        raise DataError(
            f"data_dir={str(root)!r}: no {DATASETS[dataset]} data found there ({err}). "
            f"Expected {root / DATASETS[dataset] / 'raw'}/*-ubyte files in torchvision's layout, "
            "or pass download=true on a machine with internet."
        ) from err
    except Exception as err:  # corrupt or truncated files
        raise DataError(f"data_dir={str(root)!r}: cannot read {DATASETS[dataset]} ({type(err).__name__}: {err})") from err
    targets = ds.targets
    keep = (targets == classes[0]) | (targets == classes[1])
    x = ds.data[keep].reshape(int(keep.sum()), -1).float().div(255).sub(0.5).div(0.5)
    y = (targets[keep] == classes[1]).long()
    return Split(x, y)


class ClassificationTask:
    kind = "classification"
    metric = "test_accuracy"
    objective = metric  # what a sweeper optimises (summary.json "objective")

    def __init__(self, name: str, data_dir: str | Path, classes, hidden=(128, 64), download: bool = False):
        self.name = name
        self.classes = tuple(int(c) for c in classes)
        self.widths = [784, *hidden, 2]
        self.train = load_split(name, data_dir, True, self.classes, download)
        self.test = load_split(name, data_dir, False, self.classes, download)

    def build_model(self) -> nn.Module:
        return mlp(self.widths)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    @torch.no_grad()
    def evaluate(self, forward) -> dict[str, float]:
        """Test accuracy (fraction) and loss of `forward(x) -> logits`."""
        logits = forward(self.test.x)
        return {
            "test_accuracy": (logits.argmax(1) == self.test.y).double().mean().item(),
            "test_loss": self.loss(logits, self.test.y).item(),
        }

    def figures(self, forward) -> dict:
        return {}  # the learning curve is in metrics.jsonl / wandb
