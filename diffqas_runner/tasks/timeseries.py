"""Time-series prediction (SPEC.md section 4): Bessel J2, damped pendulum, delayed quantum control, NARMA.

Each series is min-max scaled to [-1, 1] as a whole, cut into windows x = s[i:i+w], y = s[i+w]
for i in range(N - w - 1) (the first author's public code drops the last possible window: this
is what gives SPEC's 251 Bessel windows from 256 points), and the first `train_fraction` of the
windows train, the rest test. Nothing is shuffled across the split.

NARMA has two variants (`task.variant`). `authors` (the default) is the first author's public
generator: system identification, windows of the input x = u[i:i+w] predict the output y[i+w],
raw values, no scaling. `autoregressive` is this project's earlier reading: windows of the
min-max scaled output y predict its next value, after a washout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import NARMA_VARIANTS, ConfigError
from ..nets import LSTMRegressor
from .classification import Split

NARMA_LENGTH = 300  # the authors' T (and the autoregressive variant's length): 295 windows, 197 train / 98 test
NARMA_WASHOUT = 100  # autoregressive variant: steps dropped first (the transient from y = 0 would set the scale)
NARMA_Y0 = 0.196  # authors' variant: y_0


@dataclass
class Series:
    t: np.ndarray  # the time (or x) axis, for plots
    s: np.ndarray  # the raw series
    t_label: str


def bessel(length: int | None = None) -> Series:
    """J2(x) on 256 points of [2, 100]."""
    from scipy.special import jv

    x = np.linspace(2, 100, length or 256)
    return Series(x, jv(2, x), "x")


def damped_shm(length: int | None = None, b: float = 0.15, g: float = 9.81, l: float = 1.0, m: float = 1.0) -> Series:  # noqa: E741
    """Angular velocity of a damped pendulum: theta'' = -(b/m) theta' - (g/l) sin(theta), [theta, theta'](0) = [0, 3]."""
    from scipy.integrate import odeint

    def rhs(state, _t):
        theta, omega = state
        return [omega, -(b / m) * omega - (g / l) * np.sin(theta)]

    t = np.linspace(0, 20, length or 240)
    return Series(t, odeint(rhs, [0.0, 3.0], t)[:, 1], "t")


def delayed_qc(length: int | None = None) -> Series:
    """Delayed quantum control: sum_{n=0..10} exp(-10 (t - 2n)^2) exp(-t/16), t = arange(-2, 20, 0.01)."""
    t = np.arange(-2, 20, 0.01) if length is None else np.linspace(-2, 20, length, endpoint=False)
    s = sum(np.exp(-10 * (t - 2 * n) ** 2) for n in range(11)) * np.exp(-t / 16)
    return Series(t, s, "t")


def narma_input(length: int) -> np.ndarray:
    t = np.arange(length) / 100
    return 0.1 * (np.sin(2 * np.pi * 2.11 * t) * np.sin(2 * np.pi * 3.73 * t) * np.sin(2 * np.pi * 4.11 * t) + 1)


def narma(order: int, length: int | None = None, washout: int = NARMA_WASHOUT) -> Series:
    """NARMA-n: y[t+1] = 0.3 y[t] + 0.05 y[t] sum_{j<n} y[t-j] + 1.5 u[t-n+1] u[t] + 0.1 from y = 0,
    driven by the standard u[t]; the first `washout` steps are simulated and dropped."""
    total = (length or NARMA_LENGTH) + washout
    u = narma_input(total)
    y = np.zeros(total)
    for t in range(order - 1, total - 1):
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * y[t - order + 1 : t + 1].sum() + 1.5 * u[t - order + 1] * u[t] + 0.1
    return Series(np.arange(washout, total, dtype=float), y[washout:], "t")


def narma_authors_input(length: int = NARMA_LENGTH) -> np.ndarray:
    """The authors' input u_t = 0.1 (sin(2 pi 2.11 t/T) sin(2 pi 3.73 t/T) sin(2 pi 4.11 t/T) + 1), t = 0..T-1: in [0, 0.2]."""
    t = np.arange(length) / length
    return 0.1 * (np.sin(2 * np.pi * 2.11 * t) * np.sin(2 * np.pi * 3.73 * t) * np.sin(2 * np.pi * 4.11 * t) + 1)


def narma_authors(order: int, length: int | None = None) -> tuple[np.ndarray, Series]:
    """The first author's NARMA-n (SPEC.md section 4): (u, y), T values each. y_0 = 0.196, u and y are 0
    before t = 0, y[t+1] = 0.3 y[t] + 0.05 y[t] sum_{j<n} y[t-j] + 1.5 u[t-n+1] u[t] + 0.1; the last
    y (y_T) is dropped."""
    total = length or NARMA_LENGTH
    u = narma_authors_input(total)
    y = np.zeros(total + 1)
    y[0] = NARMA_Y0
    for t in range(total):
        history = y[max(t - order + 1, 0) : t + 1].sum()
        u_lag = u[t - order + 1] if t - order + 1 >= 0 else 0.0
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * history + 1.5 * u_lag * u[t] + 0.1
    return u, Series(np.arange(total, dtype=float), y[:-1], "t")


SERIES: dict[str, Callable[[int | None], Series]] = {
    "bessel": bessel,
    "damped_shm": damped_shm,
    "delayed_qc": delayed_qc,
    "narma5": lambda length=None: narma(5, length),
    "narma10": lambda length=None: narma(10, length),
}


def min_max(s: np.ndarray) -> np.ndarray:
    """Scale to [-1, 1]."""
    lo, hi = s.min(), s.max()
    return 2 * (s - lo) / (hi - lo) - 1


def windows(s: np.ndarray, window: int, inputs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x[i] = s[i:i+window], y[i] = s[i+window] for i in range(len(s) - window - 1); with `inputs`
    (as long as s), x[i] = inputs[i:i+window] instead (system identification)."""
    n = len(s) - window - 1
    if n < 2:
        raise ValueError(f"a series of {len(s)} points is too short for windows of {window}")
    x = np.lib.stride_tricks.sliding_window_view(s if inputs is None else inputs, window)[:n]
    return x, s[window : window + n]


class TimeSeriesTask:
    kind = "timeseries"
    metric = "test_mse"

    def __init__(
        self,
        name: str,
        hidden: int = 20,
        window: int = 4,
        train_fraction: float = 0.67,
        length: int | None = None,
        validation: float = 0.0,
        variant: str | None = None,
    ):
        self.name = name
        self.hidden = hidden
        self.window = window
        narma_order = {"narma5": 5, "narma10": 10}.get(name)
        if narma_order is None and variant is not None:
            raise ConfigError(f"task.variant={variant!r} is not allowed; allowed: null for {name} (only NARMA has variants)")
        if narma_order is not None and variant not in (None, *NARMA_VARIANTS):
            raise ConfigError(f"task.variant={variant!r} is not allowed; allowed: {' or '.join(NARMA_VARIANTS)} for {name}")
        self.variant = variant or (NARMA_VARIANTS[0] if narma_order else None)
        self.inputs = None  # the authors' NARMA: the input u the windows are cut from
        if self.variant == "authors":
            self.inputs, self.series = narma_authors(narma_order, length)
            self.scaled = None  # raw values: the model sees u and predicts y as they are
            self.values, self.y_label = self.series.s, "y (raw)"
        else:
            self.series = SERIES[name](length)
            self.scaled = min_max(self.series.s)
            self.values, self.y_label = self.scaled, "s (scaled to [-1, 1])"
        try:
            x, y = windows(self.values, window, self.inputs)
        except ValueError as err:
            raise ConfigError(f"task.window={window} is not allowed: {err}; allowed: up to {len(self.values) - 3}") from None
        self.n_train = int(len(y) * train_fraction)
        if not 1 <= self.n_train < len(y):
            raise ConfigError(
                f"task.train_fraction={train_fraction} leaves an empty split of {len(y)} windows; "
                "allowed: a fraction leaving >= 1 window on each side"
            )
        xt = torch.tensor(x, dtype=torch.float32)[:, :, None]  # (N, window, 1)
        yt = torch.tensor(y, dtype=torch.float32)[:, None]  # (N, 1)
        # validation: the last windows of the training part are held out (not trained on), so
        # settings can be chosen on them while the test split stays unseen
        self.n_val = round(self.n_train * validation)
        self.n_fit = self.n_train - self.n_val
        if validation and not 1 <= self.n_val < self.n_train:
            raise ConfigError(
                f"task.validation={validation} leaves an empty split of {self.n_train} training windows; "
                "allowed: 0, or a fraction leaving >= 1 window on each side"
            )
        self.train = Split(xt[: self.n_fit], yt[: self.n_fit])
        self.val = Split(xt[self.n_fit : self.n_train], yt[self.n_fit : self.n_train]) if self.n_val else None
        self.test = Split(xt[self.n_train :], yt[self.n_train :])
        # what a sweeper optimises (summary.json "objective"): never the test split (the training
        # MSE without a validation split; an optimising sweeper then refuses to start: cli.py)
        self.objective = "val_mse" if self.val is not None else "train_mse"

    def build_model(self) -> nn.Module:
        return LSTMRegressor(1, self.hidden)

    loss_kind = "mse"  # train/fused_step.py runs this loss's gradient itself

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(output, target)

    @torch.no_grad()
    def evaluate(self, forward) -> dict[str, float]:
        """Test MSE on the scaled series (on raw y for the authors' NARMA), and train MSE, for
        over-fitting at a glance; validation MSE when `task.validation` holds windows out."""
        splits = {"test": self.test, "train": self.train, "val": self.val}
        return {f"{k}_mse": self.loss(forward(v.x), v.y).item() for k, v in splits.items() if v is not None}

    @torch.no_grad()
    def figures(self, forward) -> dict:
        """prediction.png: the target series (scaled, or raw y for the authors' NARMA), the split, and
        the one-step predictions."""
        from matplotlib.figure import Figure

        t = self.series.t
        start, split = self.window, self.window + self.n_train  # window i predicts s[i + window]
        train_pred = forward(self.train.x).squeeze(1).numpy()
        fit_end = start + self.n_fit
        test_pred = forward(self.test.x).squeeze(1).numpy()
        mse = float(np.mean((test_pred - self.test.y.squeeze(1).numpy()) ** 2))
        fig = Figure(figsize=(8, 3.5), layout="constrained")
        ax = fig.subplots()
        ax.plot(t, self.values, color="0.6", lw=2.5, label="target y (raw)" if self.scaled is None else "series (scaled)")
        ax.plot(t[start:fit_end], train_pred, color="tab:blue", lw=1.2, label="prediction (train)")
        if self.val is not None:
            val_pred = forward(self.val.x).squeeze(1).numpy()
            ax.plot(t[fit_end:split], val_pred, color="tab:green", lw=1.2, label="prediction (validation)")
            ax.axvline(t[fit_end], color="k", ls=":", lw=0.8)
        ax.plot(t[split : split + len(test_pred)], test_pred, color="tab:red", lw=1.2, label="prediction (test)")
        ax.axvline(t[split], color="k", ls="--", lw=0.8)
        ax.set_xlabel(self.series.t_label)
        ax.set_ylabel(self.y_label)
        ax.set_title(f"{self.name}: test MSE {mse:.2e}")
        ax.legend(loc="best", fontsize=8)
        return {"prediction.png": fig}
