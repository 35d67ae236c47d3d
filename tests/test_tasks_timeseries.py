"""Time-series tasks: the data as SPEC.md section 4 states it, and the LSTM target run on generated weights."""

import numpy as np
import pytest
import torch
from scipy.integrate import odeint
from scipy.special import jv
from torch.func import functional_call

from diffqas_runner.nets import LSTMRegressor
from diffqas_runner.qt import Generator
from diffqas_runner.qt.generator import GeneratorOptions
from diffqas_runner.tasks.timeseries import SERIES, TimeSeriesTask, narma


@pytest.mark.parametrize(
    "name,windows,train,test",
    [("bessel", 251, 168, 83), ("damped_shm", 235, 157, 78), ("delayed_qc", 2195, 1470, 725), ("narma5", 295, 197, 98)],
)
def test_window_counts_and_split(name, windows, train, test):
    task = TimeSeriesTask(name)
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
    assert (task.objective, full.objective) == ("val_mse", "test_mse")  # what sweepers optimise


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
