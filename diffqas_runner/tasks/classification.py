"""Binary image classification (MNIST / FashionMNIST, two classes relabelled 0/1)."""

from __future__ import annotations

import math
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


RAW_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_dims(path: Path, ndim: int) -> list[int]:
    """The dimensions an IDX file of unsigned bytes declares, after checking the file holds exactly them."""
    header = 4 + 4 * ndim
    with path.open("rb") as f:
        head = f.read(header)
    if len(head) < header or head[:3] != b"\x00\x00\x08" or head[3] != ndim:
        raise DataError(
            f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) (torchvision's MNIST layout); "
            "re-copy it, or delete it and pass download=true on a machine with internet"
        )
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(dims)
    size = path.stat().st_size
    if size != expected:
        raise DataError(
            f"{path}: {size:,} bytes, but its header declares {'x'.join(map(str, dims))} ({expected:,} bytes): "
            "the file is truncated or damaged; re-copy it"
        )
    return dims


def check_raw_files(root: Path, dataset: str, train: bool) -> None:
    """Name a truncated, damaged or mismatched raw file before torchvision reads it."""
    raw = root / DATASETS[dataset] / "raw"
    images, labels = (raw / name for name in RAW_FILES[train])
    if not images.is_file() or not labels.is_file():
        return  # torchvision reports the missing dataset
    n_images, rows, cols = _idx_dims(images, 3)
    (n_labels,) = _idx_dims(labels, 1)
    if (rows, cols) != (28, 28):
        raise DataError(f"{images}: images of {rows}x{cols} pixels; allowed: 28x28 ({DATASETS[dataset]})")
    if n_images != n_labels:
        raise DataError(f"{labels} holds {n_labels:,} labels but {images.name} holds {n_images:,} images; re-copy the pair")


def load_split(dataset: str, data_dir: str | Path, train: bool, classes: tuple[int, int], download: bool) -> Split:
    """The two classes of one split as in-memory tensors (ToTensor then Normalize(0.5, 0.5))."""
    from torchvision import datasets

    cls = getattr(datasets, DATASETS[dataset])
    root = Path(data_dir)
    check_raw_files(root, dataset, train)
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found ..."
        raise DataError(
            f"data_dir={str(root)!r}: no {DATASETS[dataset]} data found there; expected "
            f"{root / DATASETS[dataset] / 'raw'}/{RAW_FILES[train][0]} and the other *-ubyte files in torchvision's "
            "layout, or pass download=true on a machine with internet"
        ) from err
    except Exception as err:  # anything else torchvision cannot read
        raise DataError(f"data_dir={str(root)!r}: cannot read {DATASETS[dataset]} ({type(err).__name__}: {err})") from err
    targets = ds.targets
    keep = (targets == classes[0]) | (targets == classes[1])
    if int(keep.sum()) == 0:
        raise DataError(f"data_dir={str(root)!r}: the {'training' if train else 'test'} split has no images of classes {classes}")
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
