"""Finite shots (issue 19): sampled frequencies, the straight-through gradient, seeding, the
train/eval streams, resuming, and the CLI keys."""

import json

import pytest
import torch
from helpers import cli, first_by_default, stop_in_training_step

from diffqas_runner.qt import shots
from diffqas_runner.qt.generator import Generator, GeneratorOptions, GeneratorSet

SHAPES = {"w": torch.Size([200])}  # 8 qubits


def test_frequencies_are_a_seeded_multinomial_draw():
    p = torch.softmax(torch.randn(3, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 1)
    f = shots.frequencies(p, 1000, (0, 0, 0, 5))
    counts = f * 1000
    assert torch.allclose(counts, counts.round()) and torch.allclose(f.sum(1), torch.ones(3, dtype=torch.float64))
    assert torch.equal(f, shots.frequencies(p, 1000, (0, 0, 0, 5)))  # same seed, same draw
    assert not torch.equal(f, shots.frequencies(p, 1000, (0, 0, 0, 6)))
    # unbiased: the mean of many draws approaches P (std of the mean ~ sqrt(p / (N * draws)))
    mean = torch.stack([shots.frequencies(p, 1000, (1, i)) for i in range(400)]).mean(0)
    assert (mean - p).abs().max() < 5 * (p.max() / (1000 * 400)) ** 0.5
    # error shrinks like 1/sqrt(N)
    err = [(shots.frequencies(p, n, (2,)) - p).abs().sum().item() for n in (10**3, 10**7)]
    assert err[1] < err[0] / 30


def test_straight_through_keeps_the_exact_gradient():
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    coeffs = torch.randn(5, dtype=torch.float64)
    p = torch.softmax(theta, 0)[None]
    est = shots.estimate(p, 100, (0,))
    assert torch.equal(est.detach(), shots.frequencies(p, 100, (0,)))
    (est * coeffs).sum().backward()
    exact = torch.autograd.grad((torch.softmax(theta, 0) * coeffs).sum(), theta)[0]
    torch.testing.assert_close(theta.grad, exact, rtol=0, atol=1e-15)


def test_generator_with_shots_draws_a_new_sample_each_training_step_and_is_reproducible():
    torch.manual_seed(0)
    gen = Generator(SHAPES, 2, GeneratorOptions(shots=1000, seed=3))
    torch.manual_seed(0)
    exact = Generator(SHAPES, 2, GeneratorOptions())
    w1 = gen()["w"]
    w2 = gen()["w"]
    assert int(gen.shot_counter) == 2 and not torch.equal(w1, w2)
    assert not torch.allclose(w1, exact()["w"], atol=1e-3)
    # the same seed and counter give the same sample
    torch.manual_seed(0)
    again = Generator(SHAPES, 2, GeneratorOptions(shots=1000, seed=3))
    assert torch.equal(again()["w"], w1)
    # gradients reach the angles and the structural weights
    (gen()["w"] ** 2).sum().backward()
    assert gen.theta.grad.abs().max() > 0 and gen.structural.grad.abs().max() > 0


def test_evaluation_uses_eval_shots_without_advancing_and_matches_the_written_model():
    torch.manual_seed(0)
    gen = GeneratorSet({"a": SHAPES}, 2, GeneratorOptions(shots=1000, eval_shots=50, seed=1))
    torch.manual_seed(0)
    exact_eval = GeneratorSet({"a": SHAPES}, 2, GeneratorOptions(shots=1000, eval_shots="exact", seed=1))
    torch.manual_seed(0)
    exact = GeneratorSet({"a": SHAPES}, 2, GeneratorOptions())
    gen()  # one training step
    with torch.no_grad(), gen.evaluating():
        e1, e2 = gen()["w"], gen()["w"]
    assert torch.equal(e1, e2) and int(gen.first.shot_counter) == 1  # same step: same evaluation sample
    assert gen.training
    with gen.first.evaluating():  # a lone Generator (Python callers of the training loops) has it too
        assert not gen.first.training
    assert gen.first.training
    with torch.no_grad(), exact_eval.evaluating(), exact.evaluating():
        torch.testing.assert_close(exact_eval()["w"], exact()["w"], rtol=0, atol=0)


def test_many_shots_approach_the_exact_weights():
    def weights(n):
        torch.manual_seed(0)
        return Generator(SHAPES, 2, GeneratorOptions(shots=n, seed=0))()["w"]

    torch.manual_seed(0)
    exact = Generator(SHAPES, 2, GeneratorOptions())()["w"]
    errors = [(weights(n) - exact).abs().mean().item() for n in (10**3, 10**9)]
    assert errors[1] < errors[0] / 100


def test_the_shot_counter_is_checkpointed():
    gen = Generator(SHAPES, 2, GeneratorOptions(shots=100))
    gen()
    gen()
    state = gen.state_dict()
    assert int(state["shot_counter"]) == 2
    fresh = Generator(SHAPES, 2, GeneratorOptions(shots=100))
    fresh.load_state_dict(state)
    assert torch.equal(fresh()["w"], gen()["w"])
    assert "shot_counter" not in Generator(SHAPES, 2).state_dict()  # exact runs: state unchanged


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_cli_records_shots_and_refuses_bad_counts(tmp_path):
    res = cli(
        ["task=bessel", "qt.shots=1e3", "debug=smoke", "figures=false", "logger=none", f"hydra.run.dir={tmp_path / 'a'}"],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["shots"] == 1000 and summary["eval_shots"] == 1000
    for bad, key in (
        ("qt.shots=0", "qt.shots=0"),
        ("qt.shots=2.5", "qt.shots=2.5"),
        ("qt.eval_shots=many", "qt.eval_shots='many'"),
    ):
        res = cli(["task=bessel", bad, "logger=none", f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
        assert res.returncode != 0 and f"{key} is not allowed" in res.stderr, res.stderr
    assert not (tmp_path / "b" / "summary.json").exists()


@pytest.mark.parametrize("eval_shots, expected", first_by_default([("500", 500), ("exact", None)]))
def test_eval_shots_is_resolved_in_the_summary(tmp_path, eval_shots, expected):
    res = cli(
        [
            "task=bessel",
            "qt.shots=1000",
            f"qt.eval_shots={eval_shots}",
            "debug=smoke",
            "figures=false",
            "logger=none",
            f"hydra.run.dir={tmp_path}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["eval_shots"] == expected


def test_model_pt_reproduces_the_reported_metrics_under_finite_shots(tmp_path):
    """The final evaluation and model.pt use the same evaluation sample (same step counter)."""
    from diffqas_runner.nets import LSTMRegressor
    from diffqas_runner.tasks.timeseries import TimeSeriesTask

    res = cli(["task=bessel", "qt.shots=300", "train.max_steps=5", "logger=none", f"hydra.run.dir={tmp_path}"], tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    model = LSTMRegressor(1, 20)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    metrics = TimeSeriesTask("bessel", hidden=20, window=4, train_fraction=0.67).evaluate(model)
    assert metrics["test_mse"] == pytest.approx(summary["metrics"]["test_mse"], rel=1e-6)


def test_a_run_stopped_inside_a_step_resumes_to_the_same_samples(tmp_path, monkeypatch):
    """A signal after the step's forward (the counter already advanced) must not shift the samples
    of the resumed run: the loop sets the counter to the step it is computing."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from diffqas_runner.cli import CONFIG_DIR
    from diffqas_runner.run import run
    from diffqas_runner.train.checkpoint import Interrupted

    def config():
        GlobalHydra.instance().clear()
        overrides = ["task=bessel", "logger=none", "train.max_steps=5", "progress=off", "qt.shots=50"]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=overrides)

    whole = run(config(), tmp_path / "a", interactive=False)
    stop_in_training_step(monkeypatch, 3)
    with pytest.raises(Interrupted):
        run(config(), tmp_path / "b", interactive=False)
    monkeypatch.undo()
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert saved["loop"]["step"] == 2  # the stopped step is redone on resume
    resumed = run(config(), tmp_path / "b", interactive=False)
    assert resumed["metrics"] == whole["metrics"] and resumed["resumed_from_step"] == 2
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_the_same_shot_count_written_two_ways_is_one_run(tmp_path):
    args = ["task=bessel", "debug=smoke", "figures=false", "logger=none", f"hydra.run.dir={tmp_path / 'r'}"]
    assert cli([*args, "qt.shots=1e3"], tmp_path).returncode == 0
    res = cli([*args, "qt.shots=1000"], tmp_path)  # the finished run, not "other settings"
    assert res.returncode == 0 and "already holds this finished run" in res.stderr, res.stderr


def test_straight_through_bias_for_a_non_linear_loss_shrinks_like_one_over_n():
    """docs/design.md: for a loss non-linear in P the straight-through gradient is biased, with
    the bias shrinking as 1/N. For L = sum(P^3), E[dL/dP at P^] = 3 (P^2 + P (1 - P) / N) (the
    multinomial's second moment), so the bias of the gradient is exactly J^T 3 P (1 - P) / N:
    measured here over 400,000 independent draws of `shots.estimate` at N = 10 and 100."""
    theta = torch.tensor([0.3, -0.2, 0.9, 0.1], dtype=torch.float64, requires_grad=True)
    draws = 400_000

    def mean_gradient(n: int) -> torch.Tensor:
        p = torch.softmax(theta, 0)
        est = shots.estimate(p.expand(draws, -1), n, (7, n))
        (theta_grad,) = torch.autograd.grad((est**3).sum() / draws, theta)
        return theta_grad

    p = torch.softmax(theta, 0)
    exact = torch.autograd.grad((p**3).sum(), theta)[0]
    biases = {}
    for n in (10, 100):
        v = (3 * p * (1 - p) / n).detach()  # the bias in dL/dP; J^T v is its gradient image
        predicted = torch.autograd.grad((v * torch.softmax(theta, 0)).sum(), theta)[0]
        biases[n] = mean_gradient(n) - exact
        torch.testing.assert_close(biases[n], predicted, rtol=0.1, atol=2e-4 / n**0.5)
    assert biases[10].abs().max() > 5 * biases[100].abs().max()  # ~10x: 1/N, not 1/sqrt(N)
    # a loss linear in P has no bias at all (the unbiased half of the claim)
    est = shots.estimate(torch.softmax(theta, 0).expand(draws, -1), 10, (8,))
    coeffs = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    linear = torch.autograd.grad((est * coeffs).sum() / draws, theta)[0]
    exact_linear = torch.autograd.grad((torch.softmax(theta, 0) * coeffs).sum(), theta)[0]
    torch.testing.assert_close(linear, exact_linear, rtol=0, atol=1e-12)
