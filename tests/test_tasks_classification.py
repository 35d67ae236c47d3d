"""Classification data from the offline torchvision layout."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffqas_runner.tasks.classification import ClassificationTask, DataError


def test_mnist_one_vs_five_split_sizes_and_normalisation(data_dir):
    task = ClassificationTask("mnist", data_dir, (1, 5))
    assert task.train.x.shape == (1658, 784) and task.test.x.shape == (332, 784)  # data/README.md
    assert task.train.x.min() == -1 and task.train.x.max() == 1
    assert set(task.train.y.unique().tolist()) == {0, 1}
    assert task.build_model()(task.test.x[:3]).shape == (3, 2)


def test_fashion_mnist_pairs(data_dir):
    task = ClassificationTask("fashion_mnist", data_dir, (5, 7))
    assert task.train.x.shape == (12000, 784) and task.test.x.shape == (2000, 784)
    assert int(task.train.y.sum()) == 6000  # class 7 is label 1


def test_missing_data_names_the_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        ClassificationTask("mnist", tmp_path, (1, 5))


def test_evaluate_reports_accuracy_as_a_fraction(data_dir):
    task = ClassificationTask("mnist", data_dir, (1, 5))

    def oracle(x):  # the right answer for whichever split is asked
        split = task.test if x is task.test.x else task.train
        return torch.nn.functional.one_hot(split.y, 2).float()

    perfect = task.evaluate(oracle)
    assert perfect["train_accuracy"] == 1.0
    assert perfect["test_accuracy"] == 1.0


def test_all_ten_classes_keep_every_image_labelled_by_digit(data_dir):
    task = ClassificationTask("mnist", data_dir, "all")
    assert task.train.x.shape == (8330, 784) and task.test.x.shape == (1670, 784)  # the whole offline subset
    assert task.widths == [784, 128, 64, 10]
    assert sum(p.numel() for p in task.build_model().parameters()) == 109_386  # issue 19
    from torchvision import datasets

    raw = datasets.MNIST(str(data_dir), train=False)
    assert torch.equal(task.test.y, raw.targets)  # labels 0..9 are the digits themselves


def test_a_class_list_is_relabelled_in_its_order(data_dir):
    task = ClassificationTask("fashion_mnist", data_dir, [7, 0, 3])
    assert task.widths[-1] == 3 and task.test.x.shape == (3000, 784)
    from torchvision import datasets

    raw = datasets.FashionMNIST(str(data_dir), train=False)
    kept = raw.targets[torch.isin(raw.targets, torch.tensor([7, 0, 3]))]
    assert torch.equal(task.test.y, torch.tensor([{7: 0, 0: 1, 3: 2}[int(t)] for t in kept]))


def test_ten_class_validation_holdout_is_stratified(data_dir):
    task = ClassificationTask("mnist", data_dir, "all", validation=0.1, seed=0)
    whole = ClassificationTask("mnist", data_dir, "all")
    for label in range(10):
        n = int((whole.train.y == label).sum())
        assert int((task.val.y == label).sum()) == round(n * 0.1)


@pytest.mark.slow
def test_ten_class_mnist_learns_from_the_qt_generator(tmp_path, data_dir):
    """`task.classes=all`: 784-128-64-10 (109,386 weights, 17 qubits) trained through DiffQAS; 40
    steps lift test accuracy well above chance (0.11) and the loss below ln 10."""
    import json

    from helpers import cli

    args = ["task=mnist", "task.classes=all", "train.max_steps=40", "logger=none", f"data_dir={data_dir}"]
    res = cli([*args, f"hydra.run.dir={tmp_path}"], tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["classical_params"] == 109_386 and summary["n_qubits"] == 17
    assert summary["metrics"]["test_accuracy"] > 0.15 and summary["metrics"]["test_loss"] < 2.25


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("train", [True, False])
def test_raw_files_read_as_torchvision_reads_them(data_dir, dataset, train):
    """A run reads the raw *-ubyte files itself (no torchvision import, ~2 s): the same images and
    labels, dtype and shape as torchvision's dataset class gives."""
    from torchvision import datasets

    from diffqas_runner.tasks.classification import DATASETS, read_raw

    data, targets = read_raw(Path(data_dir), dataset, train)
    reference = getattr(datasets, DATASETS[dataset])(root=str(data_dir), train=train, download=False)
    assert data.dtype == reference.data.dtype and targets.dtype == reference.targets.dtype
    assert torch.equal(data, reference.data) and torch.equal(targets, reference.targets)


def test_an_image_run_does_not_import_torchvision(tmp_path, data_dir):
    """The raw files present, nothing in a run imports torchvision (the download path aside)."""
    code = (
        "import sys; from diffqas_runner.tasks.classification import load_split; "
        f"load_split('mnist', {str(data_dir)!r}, True, (1, 5), False); "
        "assert 'torchvision' not in sys.modules, 'torchvision imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
