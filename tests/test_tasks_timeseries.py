"""Time-series tasks: the data as SPEC.md section 4 states it, and the LSTM target run on generated weights."""

import json

import numpy as np
import pytest
import torch
from helpers import cli, compose, first_by_default, load_kernel_or_skip
from scipy.integrate import odeint
from scipy.special import jv
from torch.func import functional_call

from diffqas_runner.config import ConfigError
from diffqas_runner.nets import LSTMRegressor
from diffqas_runner.qt import Generator
from diffqas_runner.qt.generator import GeneratorOptions
from diffqas_runner.quantum import kernel
from diffqas_runner.tasks.timeseries import SERIES, TimeSeriesTask, min_max, narma


@pytest.mark.parametrize(
    "name,windows,train,test",
    [("bessel", 251, 168, 83), ("damped_shm", 235, 157, 78), ("delayed_qc", 2195, 1470, 725), ("narma5", 295, 197, 98)],
)
def test_window_counts_and_split(name, windows, train, test):
    task = TimeSeriesTask(name, variant="autoregressive" if name == "narma5" else None)
    assert len(task.train.y) + len(task.test.y) == windows
    assert (len(task.train.y), len(task.test.y)) == (train, test)
    assert task.train.x.shape == (train, 4, 1) and task.test.y.shape == (test, 1)
    for split in (task.train, task.test):
        assert split.x.min() >= -1 and split.x.max() <= 1 and split.y.min() >= -1 and split.y.max() <= 1
    assert task.scaled.min() == -1 and task.scaled.max() == 1


def test_windows_follow_the_series_in_order():
    task = TimeSeriesTask("bessel")
    s = torch.tensor(task.scaled, dtype=torch.float32)
    x = torch.cat([task.train.x, task.test.x]).squeeze(2)
    y = torch.cat([task.train.y, task.test.y]).squeeze(1)
    for i in (0, 100, 167, 168, 250):  # across the split: no shuffling
        assert torch.equal(x[i], s[i : i + 4]) and y[i] == s[i + 4]


def test_validation_holds_out_the_last_training_windows():
    full, task = TimeSeriesTask("bessel"), TimeSeriesTask("bessel", validation=0.2)
    # 168 training windows: the last round(0.2 * 168) = 34 validate, the first 134 train
    assert (len(task.train.y), len(task.val.y), len(task.test.y)) == (134, 34, 83)
    assert torch.equal(torch.cat([task.train.x, task.val.x]), full.train.x)
    assert torch.equal(task.test.y, full.test.y)  # the test split does not move
    metrics = task.evaluate(lambda x: x[:, -1])  # predict "the last value again"
    assert set(metrics) == {"train_mse", "val_mse", "test_mse"}
    expected = torch.mean((task.val.x[:, -1] - task.val.y) ** 2).item()
    assert metrics["val_mse"] == pytest.approx(expected) and metrics["val_mse"] > 0
    assert full.val is None and "val_mse" not in full.evaluate(lambda x: x[:, -1])
    assert (task.objective, full.objective) == ("val_mse", "train_mse")  # what sweepers optimise: never test


def test_series_values():
    x = np.linspace(2, 100, 256)
    np.testing.assert_allclose(SERIES["bessel"](None).s, jv(2, x))
    assert SERIES["bessel"](None).s[0] == pytest.approx(0.35283402861563773, rel=1e-12)  # J2(2)
    shm = SERIES["damped_shm"](None)
    assert shm.s[0] == 3.0 and len(shm.s) == 240
    # a tight-tolerance integration of the same pendulum written here agrees
    t = np.linspace(0, 20, 240)
    sol = odeint(lambda z, _t: [z[1], -0.15 * z[1] - 9.81 * np.sin(z[0])], [0, 3], t, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(shm.s, sol[:, 1], atol=1e-4)
    qc = SERIES["delayed_qc"](None)
    assert len(qc.s) == 2200 and qc.s.max() == pytest.approx(1.0, abs=1e-3)  # the n=0 peak at t=0


def test_narma_recurrence_by_hand():
    y = narma(5, 12, washout=0).s
    u = 0.1 * (np.sin(2 * np.pi * 2.11 * np.arange(12) / 100) * np.sin(2 * np.pi * 3.73 * np.arange(12) / 100)
               * np.sin(2 * np.pi * 4.11 * np.arange(12) / 100) + 1)  # fmt: skip
    assert (y[:5] == 0).all()
    assert y[5] == pytest.approx(1.5 * u[0] * u[4] + 0.1)
    expect6 = 0.3 * y[5] + 0.05 * y[5] * y[1:6].sum() + 1.5 * u[1] * u[5] + 0.1
    assert y[6] == pytest.approx(expect6, rel=1e-14)
    assert narma(10, 300).s.shape == (300,) and np.isfinite(narma(10, 300).s).all()
    # the default drops the start-up transient from y = 0: the kept series is the tail of a longer run
    np.testing.assert_array_equal(narma(5, 50).s, narma(5, 150, washout=0).s[100:])
    assert narma(5, 300).s.min() > 0.1


def _authors_narma_by_hand(order, T=300):
    """SPEC.md section 4 written out plainly: (u, y[:-1]), T values each."""
    u = [0.1 * (np.sin(2 * np.pi * 2.11 * t / T) * np.sin(2 * np.pi * 3.73 * t / T) * np.sin(2 * np.pi * 4.11 * t / T) + 1)
         for t in range(T)]  # fmt: skip
    y = [0.196]
    for t in range(T):
        past = sum(y[t - j] for j in range(order) if t - j >= 0)  # y is 0 before t = 0
        u_lag = u[t - order + 1] if t - order + 1 >= 0 else 0.0  # and so is u
        y.append(0.3 * y[t] + 0.05 * y[t] * past + 1.5 * u_lag * u[t] + 0.1)
    return np.array(u), np.array(y[:-1])


@pytest.mark.parametrize("name,order", [("narma5", 5), ("narma10", 10)])
def test_narma_default_is_the_authors_system_identification(name, order):
    u, y = _authors_narma_by_hand(order)
    task = TimeSeriesTask(name)  # the default variant
    assert task.variant == "authors" and task.scaled is None
    np.testing.assert_allclose(task.inputs, u, rtol=1e-13, atol=0)
    np.testing.assert_allclose(task.series.s, y, rtol=1e-13, atol=0)
    assert len(task.inputs) == len(task.series.s) == 300
    assert task.series.s[0] == 0.196 and u.min() >= 0 and u.max() <= 0.2
    assert task.series.s[1] == pytest.approx(0.3 * 0.196 + 0.05 * 0.196**2 + 0.1, rel=1e-14)  # u before t = 0 is 0
    t = order + 3  # a step where the input term is live: 1.5 u[t-n+1] u[t]
    hand = 0.3 * y[t] + 0.05 * y[t] * y[t - order + 1 : t + 1].sum() + 1.5 * u[t - order + 1] * u[t] + 0.1
    assert task.series.s[t + 1] == pytest.approx(hand, rel=1e-14) and 1.5 * u[t - order + 1] * u[t] > 1e-3
    # 295 pairs (u[i:i+4], y[i+4]), the first 67% train, in order, on raw (unscaled) values
    x = torch.cat([task.train.x, task.test.x]).squeeze(2).double()
    target = torch.cat([task.train.y, task.test.y]).squeeze(1).double()
    assert (len(x), len(task.train.y), len(task.test.y)) == (295, 197, 98)
    for i in (0, 1, 100, 196, 197, 294):
        np.testing.assert_allclose(x[i].numpy(), u[i : i + 4], rtol=1e-6)
        assert target[i].item() == pytest.approx(y[i + 4], rel=1e-6)
    assert target.min() > 0.1 and target.max() < 0.5  # raw y, not scaled to [-1, 1]
    # metrics on raw values: predicting the mean training target gives the raw variance of the test y
    mean = task.train.y.mean()
    metrics = task.evaluate(lambda xb: mean.expand(len(xb), 1))
    assert metrics["test_mse"] == pytest.approx(((task.test.y - mean) ** 2).mean().item()) and metrics["test_mse"] < 1e-2


def test_narma_authors_length_window_and_validation():
    u, y = _authors_narma_by_hand(5, T=120)
    task = TimeSeriesTask("narma5", window=6, length=120, validation=0.2)
    np.testing.assert_allclose(task.series.s, y, rtol=1e-13, atol=0)
    n = 120 - 6 - 1
    n_train = int(n * 0.67)
    assert len(task.train.y) + len(task.val.y) + len(task.test.y) == n and task.n_train == n_train
    assert len(task.val.y) == round(n_train * 0.2)
    np.testing.assert_allclose(task.test.x[0, :, 0].numpy(), u[n_train : n_train + 6], rtol=1e-6)
    assert task.test.y[0].item() == pytest.approx(y[n_train + 6], rel=1e-6)


@pytest.mark.parametrize(
    "name,first,last,test0,scaled10,total",
    [
        ("narma5", 0.17273721032765793, 0.1541452789227059, 0.34108611941337585, -0.687730338021298, 52.639209948160165),
        ("narma10", 0.1977934546803064, 0.17565031581278334, 0.6363800764083862, -0.48800732632301147, 57.05844825996522),
    ],
)
def test_narma_autoregressive_variant_keeps_the_earlier_numbers(name, first, last, test0, scaled10, total):
    """task.variant=autoregressive: the numbers the code before task.variant gave (commit 6a0a462)."""
    task = TimeSeriesTask(name, variant="autoregressive")
    assert (task.series.s[0], task.series.s[-1], task.scaled[10]) == (first, last, scaled10)
    assert task.series.s.sum() == pytest.approx(total, rel=1e-14) and task.test.y[0].item() == test0
    np.testing.assert_array_equal(task.scaled, min_max(narma(int(name[5:]), 300).s))
    x = torch.cat([task.train.x, task.test.x]).squeeze(2)
    s = torch.tensor(task.scaled, dtype=torch.float32)
    assert len(x) == 295 and torch.equal(x[200], s[200:204])  # windows of the scaled y itself


def test_a_variant_outside_narma_or_an_unknown_one_is_refused():
    with pytest.raises(ConfigError, match=r"^task.variant='authors' is not allowed; allowed: null for bessel"):
        TimeSeriesTask("bessel", variant="authors")
    with pytest.raises(ConfigError, match=r"^task.variant='auth' is not allowed; allowed: authors or autoregressive for narma5"):
        TimeSeriesTask("narma5", variant="auth")


def test_lstm_target_has_the_paper_size():
    model = LSTMRegressor(1, 20)
    assert sum(p.numel() for p in model.parameters()) == 1781


def _reference_lstm(x, w_ih, w_hh, b, w_out, b_out):
    """Textbook LSTM (gates i, f, g, o), one bias per gate, written out per sample and step."""
    out = []
    for seq in x:
        h = torch.zeros(w_hh.shape[1], dtype=x.dtype)
        c = torch.zeros_like(h)
        for xt in seq:
            z = w_ih @ xt + w_hh @ h + b
            i, f, g, o = z.split(len(h))
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        out.append(w_out @ h + b_out)
    return torch.stack(out)


def test_lstm_gradients_match_the_textbook_reference():
    """The generated weights' gradients through the target (torch's fused LSTM) equal those
    through the textbook cell written out per sample and step."""
    torch.manual_seed(1)
    model = LSTMRegressor(1, 20).double()
    params = {k: torch.randn_like(v, requires_grad=True) for k, v in model.named_parameters()}
    x, y = torch.randn(5, 4, 1, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    got = torch.autograd.grad((functional_call(model, params, (x,)) - y).square().sum(), list(params.values()))
    ref = _reference_lstm(x, *(params[k] for k in ("weight_ih", "weight_hh", "bias", "head.weight", "head.bias")))
    want = torch.autograd.grad((ref - y).square().sum(), list(params.values()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


KEYS = ("weight_ih", "weight_hh", "bias", "head.weight", "head.bias")


@pytest.mark.parametrize("batch,steps,inputs,hidden", [(10, 4, 1, 20), (1, 1, 1, 1), (3, 7, 2, 5), (0, 4, 1, 20)])
def test_lstm_on_the_kernel_matches_the_textbook_reference(monkeypatch, batch, steps, inputs, hidden):
    """The target on kernel.cpp (nets.LSTMRegressor.native): predictions and every gradient (the
    input's too) equal the textbook cell's, in float64; odd sizes and an empty batch included."""
    load_kernel_or_skip(monkeypatch)
    torch.manual_seed(2)
    model = LSTMRegressor(inputs, hidden).double()
    model.native = True
    params = {k: torch.randn_like(v, requires_grad=True) for k, v in model.named_parameters()}
    x = torch.randn(batch, steps, inputs, dtype=torch.float64, requires_grad=True)
    y = torch.randn(batch, 1, dtype=torch.float64)
    assert kernel.lstm_takes(x, *params.values())
    got_out = functional_call(model, params, (x,))
    assert got_out.grad_fn is not None and "LSTMRegression" in type(got_out.grad_fn).__name__  # the kernel ran
    got = torch.autograd.grad((got_out - y).square().sum(), [x, *params.values()], allow_unused=True)
    ref_out = _reference_lstm(x, *(params[k] for k in KEYS)) if batch else torch.zeros(0, 1, dtype=torch.float64)
    torch.testing.assert_close(got_out, ref_out, rtol=1e-12, atol=1e-12)
    if not batch:
        assert all(g is None or not g.abs().sum() for g in got)
        return
    want = torch.autograd.grad((ref_out - y).square().sum(), [x, *params.values()])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_lstm_on_the_kernel_passes_gradcheck_and_matches_torch_in_float32(monkeypatch):
    """Finite differences (torch's gradcheck) on the hand-written backward; in float32 the kernel
    (float64 sums) and torch's LSTM agree to float32 rounding; under no_grad nothing is kept."""
    load_kernel_or_skip(monkeypatch)
    torch.manual_seed(3)
    shapes = [(3, 5, 2), (12, 2), (12, 3), (12,), (1, 3), (1,)]
    args = [torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(kernel.lstm_regression, args)
    model = LSTMRegressor(1, 20)
    params = {k: (v.detach() * 3).requires_grad_() for k, v in model.named_parameters()}
    x = torch.randn(10, 4, 1)
    model.native = False
    want = functional_call(model, params, (x,))
    model.native = True
    got = functional_call(model, params, (x,))
    assert "LSTMRegression" in type(got.grad_fn).__name__
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        again = functional_call(model, params, (x,))
    assert torch.equal(again, got.detach())  # deterministic: the same call, the same bits


def test_lstm_kernel_refuses_what_it_would_misread(monkeypatch):
    """Wrong shapes, mixed or unsupported dtypes and other devices raise before any pointer is read."""
    load_kernel_or_skip(monkeypatch)
    x = torch.randn(2, 3, 1)
    good = [torch.randn(8, 1), torch.randn(8, 2), torch.randn(8), torch.randn(1, 2), torch.randn(1)]
    kernel.lstm_regression(x, *good)
    for i, bad in enumerate([torch.randn(8, 2), torch.randn(8, 3), torch.randn(4), torch.randn(2), torch.randn(2)]):
        args = list(good)
        args[i] = bad
        with pytest.raises(ValueError, match="the LSTM's shapes must be"):
            kernel.lstm_regression(x, *args)
    for i, bad in enumerate([good[0].double(), good[1].half(), good[2].to("meta"), good[3].long()]):
        args = [x, *good]
        args[i + 1] = bad
        with pytest.raises(ValueError, match="the C\\+\\+ LSTM takes CPU float32 or float64 tensors of one dtype"):
            kernel.lstm_regression(*args)
    with pytest.raises(ValueError, match="of one dtype"):
        kernel.lstm_regression(x.double(), *good)


def test_lstm_kernel_keeps_relative_precision_at_tiny_activations(monkeypatch):
    """Near 0 tanh is std::tanh's, not the exp formula's (which would cancel): weights of 1e-12
    still give predictions and gradients to float64 relative precision."""
    load_kernel_or_skip(monkeypatch)
    torch.manual_seed(5)
    model = LSTMRegressor(1, 8).double()
    model.native = True
    params = {k: (torch.randn_like(v) * 1e-12).requires_grad_() for k, v in model.named_parameters()}
    x = torch.randn(4, 5, 1, dtype=torch.float64)
    got = functional_call(model, params, (x,))
    want = _reference_lstm(x, *(params[k] for k in KEYS))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for a, b in zip(
        torch.autograd.grad(got.sum(), list(params.values())), torch.autograd.grad(want.sum(), list(params.values()))
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-30)


@pytest.mark.parametrize("backend,native", [("native", True), ("pennylane", False)])
def test_the_target_runs_on_the_kernel_exactly_with_the_native_simulator(monkeypatch, backend, native):
    """run.build sets the LSTM target's path with the simulator's; summary.json records it."""
    from diffqas_runner.config import validate
    from diffqas_runner.run import build, simulator_record

    load_kernel_or_skip(monkeypatch)
    cfg = compose(["task=bessel", "logger=none", f"backend={backend}", "search=fixed", "search.arch=8"])
    validate(cfg)
    exp = build(cfg)
    assert exp.model.native is native
    assert simulator_record(cfg, exp.generator.first, exp.model)["target"] == ("cpp" if native else "torch")


def test_lstm_on_generated_weights_matches_reference_and_nn_lstm():
    torch.manual_seed(0)
    model = LSTMRegressor(1, 20)
    gen = Generator({k: v.shape for k, v in model.named_parameters()}, depth=3, options=GeneratorOptions(out_dtype=torch.float64))
    assert gen.n_qubits == 11
    params = gen()
    x = torch.randn(7, 4, 1, dtype=torch.float64)
    got = functional_call(model, params, (x,))
    want = _reference_lstm(
        x, params["weight_ih"], params["weight_hh"], params["bias"], params["head.weight"], params["head.bias"]
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the same weights in torch.nn.LSTM (its second bias set to zero) give the same prediction
    lstm = torch.nn.LSTM(1, 20, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(params["weight_ih"])
        lstm.weight_hh_l0.copy_(params["weight_hh"])
        lstm.bias_ih_l0.copy_(params["bias"])
        lstm.bias_hh_l0.zero_()
        hidden = lstm(x)[0][:, -1]
    torch.testing.assert_close(got.detach(), hidden @ params["head.weight"].detach().T + params["head.bias"].detach())


def test_gradients_reach_every_generated_tensor_and_the_circuit():
    torch.manual_seed(1)
    task = TimeSeriesTask("bessel")
    model = task.build_model()
    gen = Generator({k: v.shape for k, v in model.named_parameters()}, depth=10)
    assert gen.paper_parameters() == 135  # SPEC section 3: 10*11 angles + 12 + Linear(12 -> 1)
    assert gen.trainable_parameters() == 134  # the output bias is dead under the centred output
    params = gen()
    for t in params.values():
        t.retain_grad()
    task.loss(functional_call(model, params, (task.train.x[:10],)), task.train.y[:10]).backward()
    for name, t in params.items():
        assert t.grad is not None and t.grad.abs().sum() > 0, name
    scale = max(p.grad.abs().max().item() for p in gen.parameters() if p.grad is not None)
    for name, p in gen.named_parameters():  # relative to the largest gradient: rounding noise does not pass
        assert (p.grad is None) == (not p.requires_grad), name
        assert p.grad is None or p.grad.abs().max().item() > 1e-8 * scale, name


def test_prediction_figure_has_series_split_and_predictions():
    task = TimeSeriesTask("damped_shm")
    model = task.build_model()
    figs = task.figures(model)
    ax = figs["prediction.png"].axes[0]
    lines = ax.get_lines()
    assert len(lines) == 4  # series, train prediction, test prediction, split marker
    assert len(lines[1].get_xdata()) == 157 and len(lines[2].get_xdata()) == 78
    assert ax.get_ylabel() == "s (scaled to [-1, 1])"


def test_narma_authors_figure_plots_raw_y_and_the_predictions():
    task = TimeSeriesTask("narma10")
    model = task.build_model()
    ax = task.figures(model)["prediction.png"].axes[0]
    series, train, test = ax.get_lines()[:3]
    assert ax.get_ylabel() == "y (raw)"
    np.testing.assert_array_equal(series.get_ydata(), task.series.s)  # the target y, not u, not scaled
    with torch.no_grad():  # window i predicts y[i + 4]: drawn at t = i + 4
        np.testing.assert_allclose(test.get_ydata(), model(task.test.x).squeeze(1).numpy())
    np.testing.assert_array_equal(train.get_xdata(), task.series.t[4 : 4 + 197])
    np.testing.assert_array_equal(test.get_xdata(), task.series.t[4 + 197 : 4 + 295])


@pytest.mark.parametrize(
    "overrides,needle",
    first_by_default(
        [
            (
                ["task=narma5", "task.variant=authorz"],
                "task.variant='authorz' is not allowed; allowed: authors or autoregressive",
            ),
            (["task=narma10", "task.variant=null"], "task.variant=None is not allowed; allowed: authors or autoregressive"),
            (["task=bessel", "task.variant=authors"], "task.variant='authors' is not allowed; allowed: null for bessel"),
            (["task=damped_shm", "task.variant=autoregressive"], "task.variant='autoregressive' is not allowed"),
        ]
    ),
)
def test_a_bad_variant_is_one_line_through_the_cli(tmp_path, overrides, needle):
    out = tmp_path / "run"
    proc = cli([*overrides, "debug=smoke", "logger=none", f"hydra.run.dir={out}"], tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (out / "summary.json").exists()


@pytest.mark.slow  # the default suite keeps one end-to-end test per promise; this one runs in CI
def test_narma_smoke_runs_for_both_variants_and_the_fingerprint_tells_them_apart(tmp_path):
    runs = {}
    for variant in ("authors", "autoregressive"):
        out = tmp_path / variant
        proc = cli(["task=narma5", f"task.variant={variant}", "debug=smoke", "depth=2", "logger=none", f"hydra.run.dir={out}"],
                   tmp_path, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        runs[variant] = json.loads((out / "summary.json").read_text())
        assert runs[variant]["task"] == "narma5" and runs[variant]["steps"] == 3
        assert (out / "prediction.png").read_bytes()[:4] == b"\x89PNG"
        assert f"variant: {variant}" in (out / ".hydra" / "config.yaml").read_text()
    assert runs["authors"]["metrics"]["test_mse"] != runs["autoregressive"]["metrics"]["test_mse"]
    # the other variant in a finished run's directory is another config: refused, naming the key
    proc = cli(["task=narma5", "task.variant=authors", "debug=smoke", "depth=2", "logger=none",
                f"hydra.run.dir={tmp_path / 'autoregressive'}"], tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "task.variant" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
