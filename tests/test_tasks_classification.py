"""Classification data from the offline torchvision layout."""

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
