"""Mini-batch training of a target network whose weights come from the QT generator.

The generator runs once per optimisation step (not per sample); the target runs through
`torch.func.functional_call` on the generated weights so every gradient reaches the circuit.
The loop's whole state (counters, the epoch's data order, the shuffling RNG) lives in `LoopState`
so that a checkpoint taken after any step resumes to the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.func import functional_call

from . import fused_step
from .checkpoint import StopRequested


class NonFiniteLoss(RuntimeError):
    """The loss, a gradient or a parameter became NaN or infinite: the run stops before the
    optimiser step, so the last checkpoint holds only finite numbers."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


_NUMPY_DTYPES = (torch.float32, torch.float64)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry is finite: through numpy for CPU float32/float64 tensors (a step's few
    small parameters: about 3 us each, where torch's dispatch costs some 60 us for the lot), else
    one fused torch check."""
    if all(t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES for t in tensors):
        return all(bool(np.isfinite(t.detach().resolve_neg().numpy()).all()) for t in tensors)
    return bool(torch.isfinite(torch.cat([t.detach().reshape(-1) for t in tensors])).all())


def _first_non_finite(named: list[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor with a non-finite entry, or None: one check over all of them
    (a step's few parameters are small), then the per-tensor search only when it fails."""
    if not named or _all_finite([t for _, t in named]):
        return None
    return next(name for name, t in named if not bool(torch.isfinite(t).all()))


def check_parameters(module: torch.nn.Module, where: str, step: int | None = None, named: list | None = None) -> None:
    """After the optimiser step: raise NonFiniteLoss before a non-finite parameter can be saved.
    named: the module's named_parameters() as a list, kept by a loop that checks every step."""
    name = _first_non_finite(list(module.named_parameters()) if named is None else named)
    if name is not None:
        raise NonFiniteLoss(
            f"parameter {name} became non-finite in the optimiser step at {where}; the last checkpoint is kept", step=step
        )


def check_gradients(module: torch.nn.Module, where: str, named: list | None = None) -> None:
    """Raise NonFiniteLoss if a gradient is not finite (before the optimiser step; the parameters
    themselves are checked after every step, by `check_parameters`)."""
    named = module.named_parameters() if named is None else named
    name = _first_non_finite([(n, p.grad) for n, p in named if p.grad is not None])
    if name is not None:
        raise NonFiniteLoss(f"gradient {name} became non-finite at {where}; the optimiser step was not taken")


def check_metrics(metrics: dict, where: str, step: int | None = None) -> None:
    """Raise NonFiniteLoss if an evaluated metric is NaN or infinite (a diverged model): nothing
    non-finite is logged or saved, at any evaluation (the first step's too)."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLoss(
            f"{where} gave {shown}: the model diverged (try a smaller train.lr); nothing non-finite was saved", step=step
        )


@dataclass
class LoopResult:
    metrics: dict[str, float]
    steps: int
    epochs: int
    seconds: float  # training time, summed over resumed pieces


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    pos: int = 0  # index in `perm` of the next batch
    perm: torch.Tensor | None = None  # this epoch's data order (None: draw one at the next step)
    order: torch.Tensor | None = None  # state of the shuffling RNG
    running: float = 0.0  # loss summed since the last logged row
    count: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def total_steps(n_train: int, train_cfg) -> int:
    """Optimisation steps of the run: epochs of ceil(n / batch) steps, capped by train.max_steps."""
    steps = train_cfg.epochs * math.ceil(n_train / train_cfg.batch_size)
    return min(steps, train_cfg.max_steps or steps)


def _forward_backward(
    task, model, generator, optimizer, s: LoopState, x, y, checkpointer, fused=None, named=None
) -> torch.Tensor:
    """One step's forward and backward on a batch; the loss, or NonFiniteLoss before anything changed.
    fused: the step as one kernel call (train/fused_step.py), which writes the gradients itself;
    named: the generator's named parameters (a list kept for the run)."""
    generator.at_step(s.step)  # finite shots: this step's sample, also when a resumed run redoes it
    if fused is not None:  # gradients written with the loss (the parameters stay as they are)
        optimizer.zero_grad(set_to_none=True)
        loss = fused(x, y)
    else:
        loss = task.loss(functional_call(model, generator(), (x,)), y)
    if not torch.isfinite(loss):
        where = f", the last checkpoint is {checkpointer.path}" if checkpointer and checkpointer.path.exists() else ""
        raise NonFiniteLoss(
            f"loss became {loss.item()} at step {s.step + 1} (epoch {s.epoch}); parameters left at step {s.step}{where}",
            step=s.step + 1,
        )
    if fused is None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    check_gradients(generator, f"step {s.step + 1} (epoch {s.epoch})", named)
    return loss


def _evaluation_row(s: LoopState, evaluate, generator, recorder, progress, epoch_done: bool, n: int, wall: float) -> None:
    """Evaluate, check the metrics are finite, and log one metrics row (and the progress line)."""
    s.metrics = evaluate()
    check_metrics(s.metrics, f"the evaluation after step {s.step} (epoch {s.epoch})", s.step)
    row = {"step": s.step, "epoch": s.epoch + (1 if epoch_done else s.pos / n), "loss": s.running / s.count}
    row.update(s.metrics)
    weights = generator.structural_weights()
    if weights is not None:
        row["structural_weights"] = weights.detach().tolist()
    row["wall_seconds"] = wall
    recorder.log(row)
    if progress is not None:
        progress.report(row, f"epoch {row['epoch']:.3g}")
    s.running, s.count = 0.0, 0


def train_supervised(
    task, model, generator, optimizer, train_cfg, recorder, progress=None, seed: int = 0, scheduler=None,
    checkpointer=None, state: LoopState | None = None,
) -> LoopResult:  # fmt: skip
    x_train, y_train = task.train.x, task.train.y
    n = len(y_train)
    batch = train_cfg.batch_size
    total = total_steps(n, train_cfg)
    eval_every = train_cfg.eval_every
    s = state or LoopState()
    fused = fused_step.build(task, model, generator)  # the step as one kernel call, where its structure allows
    named = list(generator.named_parameters())  # checked every step: walked once
    order = torch.Generator().manual_seed(seed)
    if s.order is not None:
        order.set_state(s.order)

    def evaluate() -> dict[str, float]:
        with torch.no_grad(), generator.evaluating():
            params = generator()
            return task.evaluate(lambda x: functional_call(model, params, (x,)))

    def snapshot() -> dict:
        s.order = order.get_state()
        s.seconds = seconds + time.perf_counter() - start
        return s.to_dict()

    seconds, start = s.seconds, time.perf_counter()
    while s.step < total:
        if s.perm is None:
            s.perm, s.pos = torch.randperm(n, generator=order), 0
        idx = s.perm[s.pos : s.pos + batch].to(x_train.device)
        try:
            with checkpointer.signals.immediate() if checkpointer is not None else nullcontext():
                # forward and backward: a signal here abandons the step at once (nothing has changed yet)
                loss = _forward_backward(
                    task, model, generator, optimizer, s, x_train[idx], y_train[idx], checkpointer, fused, named
                )
        except StopRequested as stop:
            raise checkpointer.stopped(stop, s.step, snapshot) from None
        optimizer.step()
        check_parameters(generator, f"step {s.step + 1} (epoch {s.epoch})", step=s.step + 1, named=named)
        if scheduler is not None:
            scheduler.step()
        s.step += 1
        s.pos += batch
        s.running += loss.item()
        s.count += 1
        if progress is not None:
            progress.advance(1, loss=f"{loss.item():.4f}")
        epoch_done = s.pos >= n
        if s.step >= total or (eval_every and s.step % eval_every == 0) or (not eval_every and epoch_done):
            _evaluation_row(s, evaluate, generator, recorder, progress, epoch_done, n, seconds + time.perf_counter() - start)
        if epoch_done:
            s.epoch, s.perm, s.pos = s.epoch + 1, None, 0
        if checkpointer is not None:
            checkpointer.after_step(s.step, snapshot)
    snapshot()
    return LoopResult(metrics=s.metrics, steps=s.step, epochs=s.epoch, seconds=s.seconds)
