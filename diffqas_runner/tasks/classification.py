"""Image classification (MNIST / FashionMNIST): two classes relabelled 0/1 (the paper), or up to all ten (0..K-1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from ..nets import ToolkitCNN, mlp

DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MODELS = ("mlp", "cnn")  # the target: MLP 784-hidden-K | the toolkit's CNN (nets.ToolkitCNN)


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


def _idx_header(ndim: int) -> int:
    """Bytes before the data of an IDX file: the magic number, then one 4-byte size per dimension."""
    return 4 + 4 * ndim


def _idx_dims(path: Path, ndim: int) -> list[int]:
    """The dimensions an IDX file of unsigned bytes declares, after checking the file holds exactly them."""
    header = _idx_header(ndim)
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
    for path in (images, labels):
        if path.exists() and not path.is_file():
            raise DataError(f"{path} is not a file; expected torchvision's raw *-ubyte file there")
    if not images.is_file() or not labels.is_file():
        return  # torchvision reports the missing dataset
    n_images, rows, cols = _idx_dims(images, 3)
    (n_labels,) = _idx_dims(labels, 1)
    if (rows, cols) != (28, 28):
        raise DataError(f"{images}: images of {rows}x{cols} pixels; allowed: 28x28 ({DATASETS[dataset]})")
    if n_images != n_labels:
        raise DataError(f"{labels} holds {n_labels:,} labels but {images.name} holds {n_images:,} images; re-copy the pair")


def read_raw(root: Path, dataset: str, train: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images (N, 28, 28) uint8, labels (N,) int64) straight from the raw files when both are there
    (checked by `check_raw_files` first), as torchvision's MNIST reads them; else None.
    Importing torchvision costs about 2 s (its package imports torch._dynamo), more than a smoke
    run's training: it is imported only to download or to report a missing dataset."""
    raw = root / DATASETS[dataset] / "raw"
    images, labels = (raw / name for name in RAW_FILES[train])
    if not images.is_file() or not labels.is_file():
        return None
    data = np.fromfile(images, dtype=np.uint8, offset=_idx_header(3)).reshape(-1, 28, 28)
    targets = np.fromfile(labels, dtype=np.uint8, offset=_idx_header(1)).astype(np.int64)
    return torch.from_numpy(data), torch.from_numpy(targets)


def _torchvision_split(root: Path, dataset: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) through torchvision's dataset class: its download, and its report of a missing dataset."""
    from torchvision import datasets

    cls = getattr(datasets, DATASETS[dataset])
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found ..."
        if download:
            raise DataError(f"data_dir={str(root)!r}: download=true failed ({str(err).splitlines()[0]})") from err
        raise DataError(
            f"data_dir={str(root)!r}: no {DATASETS[dataset]} data found there; expected "
            f"{root / DATASETS[dataset] / 'raw'}/{RAW_FILES[train][0]} and the other *-ubyte files in torchvision's "
            "layout, or pass download=true on a machine with internet"
        ) from err
    except Exception as err:  # anything else torchvision cannot read
        raise DataError(f"data_dir={str(root)!r}: cannot read {DATASETS[dataset]} ({type(err).__name__}: {err})") from err
    return ds.data, ds.targets


def load_split(dataset: str, data_dir: str | Path, train: bool, classes: tuple[int, ...], download: bool) -> Split:
    """The chosen classes of one split as in-memory tensors (ToTensor then Normalize(0.5, 0.5)),
    labelled 0..K-1 in the order of `classes`."""
    root = Path(data_dir)
    check_raw_files(root, dataset, train)
    split = read_raw(root, dataset, train)
    data, targets = split if split is not None else _torchvision_split(root, dataset, train, download)
    keep = torch.isin(targets, torch.tensor(classes))
    for label in classes:
        if not bool((targets == label).any()):
            raise DataError(
                f"data_dir={str(root)!r}: the {'training' if train else 'test'} split of {DATASETS[dataset]} has no image "
                f"of class {label}; allowed: task.classes present in the data"
            )
    x = data[keep].reshape(int(keep.sum()), -1).float().div(255).sub(0.5).div(0.5)
    relabel = torch.full((int(targets.max()) + 1,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    return Split(x, relabel[targets[keep].long()])


def stratified_holdout(y: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, validation indices): `fraction` of each class's images, chosen by a seeded
    shuffle, are held out; both index lists are sorted (the data order stays the dataset's)."""
    order = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for label in torch.unique(y).tolist():
        members = torch.nonzero(y == label).squeeze(1)
        members = members[torch.randperm(len(members), generator=order)]
        k = round(len(members) * fraction)
        if not 1 <= k < len(members):
            raise ConfigError(
                f"task.validation={fraction} holds out {k} of the {len(members)} training images of a class; "
                "allowed: 0, or a fraction leaving >= 1 image of each class on each side"
            )
        val.append(members[:k])
        fit.append(members[k:])
    return torch.cat(fit).sort().values, torch.cat(val).sort().values


class ClassificationTask:
    kind = "classification"
    metric = "test_accuracy"

    def __init__(
        self, name: str, data_dir: str | Path, classes, hidden=(128, 64), download: bool = False,
        validation: float = 0.0, seed: int = 0, model: str = "mlp",
    ):  # fmt: skip
        if model not in MODELS:
            raise ConfigError(f"task.model={model!r} is not allowed; allowed: {', '.join(MODELS)}")
        self.name = name
        self.model = model
        self.classes = tuple(range(10)) if classes == "all" else tuple(int(c) for c in classes)
        self.widths = [784, *hidden, len(self.classes)]
        train = load_split(name, data_dir, True, self.classes, download)
        self.test = load_split(name, data_dir, False, self.classes, download)
        # validation: a stratified, seeded hold-out of the training images (never the test set),
        # what settings are chosen on and what a sweeper optimises when it exists
        self.val = None
        if validation:
            fit, val = stratified_holdout(train.y, validation, seed)
            self.val = Split(train.x[val], train.y[val])
            train = Split(train.x[fit], train.y[fit])
        self.train = train
        # what a sweeper optimises (summary.json "objective"): never the test split
        self.objective = "val_accuracy" if self.val is not None else "train_accuracy"

    def build_model(self) -> nn.Module:
        if self.model == "cnn":
            return ToolkitCNN(len(self.classes))
        return mlp(self.widths)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(output, target)

    @torch.no_grad()
    def evaluate(self, forward) -> dict[str, float]:
        """Accuracy (fraction) and loss of `forward(x) -> logits` on the test split and on the
        validation split when one is held out; training accuracy too (over-fitting at a glance)."""
        out = {}
        for split_name, split in (("test", self.test), ("val", self.val)):
            if split is not None:
                logits = forward(split.x)
                out[f"{split_name}_accuracy"] = (logits.argmax(1) == split.y).double().mean().item()
                out[f"{split_name}_loss"] = self.loss(logits, split.y).item()
        out["train_accuracy"] = (forward(self.train.x).argmax(1) == self.train.y).double().mean().item()
        return out

    def figures(self, forward) -> dict:
        return {}  # the learning curve is in metrics.jsonl / wandb
