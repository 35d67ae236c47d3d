"""The search's answer (issue 16): identical candidates grouped, validation for classification,
the selection stage."""

import json

import pytest
import torch
from helpers import cli, confirm

from diffqas_runner.qt import Generator
from diffqas_runner.qt.generator import GeneratorOptions
from diffqas_runner.quantum import CANDIDATES, candidate, probabilities
from diffqas_runner.quantum.groups import angle_independent, output_groups
from diffqas_runner.tasks.classification import ClassificationTask, stratified_holdout

PAPER_GROUPS = [(1, 3, 4, 6), (2,), (5,), (7,), (8,), (9, 12), (10,), (11,)]


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_identical_candidates_are_grouped_by_structure_and_confirmed_numerically(n):
    assert output_groups(CANDIDATES, n) == PAPER_GROUPS
    assert angle_independent(CANDIDATES, n) == [1, 3, 4, 6, 9, 12]
    # members equal, angle-independent ones constant (and uniform or |0..0>), groups distinct: against
    # PennyLane, which shares no code with the structural rules or the native simulator
    confirm(CANDIDATES, n, 3, lambda t, c: probabilities(t, c, backend="pennylane"))


def test_confirm_catches_a_wrong_grouping(monkeypatch):
    """The numerical check can fail: claim 2 and 5 (H-Ent-Ry, H-Cyc-Ry) are one group."""
    import diffqas_runner.quantum.groups as groups

    real = groups._signature
    monkeypatch.setattr(groups, "_signature", lambda c, n, depth=None: ("same",) if c.number in (2, 5) else real(c, n, depth))
    with pytest.raises(AssertionError, match=r"group \(2, 5\) differs"):
        confirm(CANDIDATES, 4, 3, lambda t, c: probabilities(t, c, backend="pennylane"))


def test_ranking_lists_each_group_once_best_first():
    gen = Generator({"w": torch.Size([100])}, 2)
    with torch.no_grad():
        w = torch.tensor([0.5, 0.1, 0.5, 0.5, 0.3, 0.5, 0.2, 0.9, 0.05, 0.0, 0.4, 0.05], dtype=torch.float64)
        gen.structural.copy_(w)
    assert gen.ranking_groups() == [[8], [1, 3, 4, 6], [11], [5], [7], [2], [9, 12], [10]]
    assert gen.ranking() == [8, 1, 11, 5, 7, 2, 9, 10]
    fixed = Generator({"w": torch.Size([100])}, 2, GeneratorOptions(mode="fixed", arch=3))
    assert fixed.ranking_groups() is None and fixed.angle_independent() == [3]


def test_classification_validation_is_a_stratified_seeded_holdout_of_the_training_images(data_dir):
    task = ClassificationTask("mnist", data_dir, [1, 5], validation=0.1, seed=3)
    whole = ClassificationTask("mnist", data_dir, [1, 5])
    assert len(task.train.y) + len(task.val.y) == len(whole.train.y) == 1658
    assert torch.equal(task.test.x, whole.test.x)  # the test split is never touched
    for label in (0, 1):
        n = int((whole.train.y == label).sum())
        assert int((task.val.y == label).sum()) == round(0.1 * n)  # stratified
    # no image is in both splits, and the split follows the seed
    fit, val = stratified_holdout(whole.train.y, 0.1, 3)
    assert set(fit.tolist()).isdisjoint(val.tolist()) and len(fit) + len(val) == 1658
    assert not torch.equal(stratified_holdout(whole.train.y, 0.1, 4)[1], val)
    assert task.objective == "val_accuracy" and whole.objective == "train_accuracy"
    metrics = task.evaluate(lambda x: torch.stack([x.mean(1), -x.mean(1)], 1))
    assert {"test_accuracy", "test_loss", "val_accuracy", "val_loss", "train_accuracy"} == set(metrics)


def _cli(args, cwd):
    return cli(args, cwd)


def test_mnist_with_validation_logs_and_optimises_val_accuracy(tmp_path, data_dir):
    out = tmp_path / "run"
    proc = _cli(["task=mnist", "task.validation=0.1", "debug=smoke", "figures=false", "logger=none", "depth=2",
                 f"data_dir={data_dir}", f"hydra.run.dir={out}"], tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "val_accuracy" and 0 <= summary["metrics"]["val_accuracy"] <= 1
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["val_accuracy"] == summary["metrics"]["val_accuracy"]


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_the_selection_stage_names_an_angle_dependent_architecture(tmp_path):
    out = tmp_path / "run"
    args = ["task=bessel", "search=diffqas", "search.select=2", "task.validation=0.2", "depth=3", "train.epochs=3",
            "logger=none", "train.threads=1", f"hydra.run.dir={out}"]  # fmt: skip
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["ranking_groups"] and [1, 3, 4, 6] in s["ranking_groups"] and [9, 12] in s["ranking_groups"]
    assert s["angle_independent"] == [1, 3, 4, 6, 9, 12]
    table = s["selection"]
    assert table["metric"] == "val_mse"
    retrained = [r for r in table["contenders"] if r["arch"] is not None]
    dependent = [g[0] for g in s["ranking_groups"] if g[0] not in s["angle_independent"]][:2]
    assert [r["arch"] for r in retrained] == dependent  # the two best distinct angle-dependent groups
    for r in retrained:
        child = json.loads((out / "select" / f"arch_{r['arch']}" / "summary.json").read_text())
        assert (child["search"], child["arch"]) == ("fixed", r["arch"])
        assert (r["val_mse"], r["test_mse"]) == (child["metrics"]["val_mse"], child["metrics"]["test_mse"])
        assert r["structural_weight"] == s["structural_weights"][r["arch"] - 1]
    best = min(retrained, key=lambda r: r["val_mse"])
    assert s["selected_arch"] == best["arch"] and s["selected_name"] == candidate(best["arch"]).name
    assert s["selected_arch"] not in s["angle_independent"]
    ensemble = [r for r in table["contenders"] if r["arch"] is None]
    assert ensemble[0]["val_mse"] == s["metrics"]["val_mse"]
    selected = torch.load(out / "selected_model.pt", weights_only=True)
    child_model = torch.load(out / "select" / f"arch_{best['arch']}" / "model.pt", weights_only=True)
    assert selected.keys() == child_model.keys() and all(torch.equal(selected[k], child_model[k]) for k in selected)
