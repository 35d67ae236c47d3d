"""Mini-batch training of a target network whose weights come from the QT generator.

The generator runs once per optimisation step (not per sample); the target runs through
`torch.func.functional_call` on the generated weights so every gradient reaches the circuit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch.func import functional_call


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class LoopResult:
    metrics: dict[str, float]
    steps: int
    epochs: int


def train_supervised(task, model, generator, optimizer, train_cfg, recorder, progress=None, seed: int = 0):
    x_train, y_train = task.train.x, task.train.y
    n = len(y_train)
    batch = train_cfg.batch_size
    steps_per_epoch = math.ceil(n / batch)
    max_steps = train_cfg.max_steps or train_cfg.epochs * steps_per_epoch
    total = min(max_steps, train_cfg.epochs * steps_per_epoch)
    eval_every = train_cfg.eval_every
    order = torch.Generator().manual_seed(seed)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            params = generator()
            return task.evaluate(lambda x: functional_call(model, params, (x,)))

    step, epoch, running, count = 0, 0, 0.0, 0
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    bar = progress(total=total) if progress else None
    try:
        while step < total:
            perm = torch.randperm(n, generator=order)
            for i in range(0, n, batch):
                idx = perm[i : i + batch]
                output = functional_call(model, generator(), (x_train[idx],))
                loss = task.loss(output, y_train[idx])
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"loss became {loss.item()} at step {step} (epoch {epoch})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                running += loss.item()
                count += 1
                if bar:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                epoch_done = i + batch >= n
                if step >= total or (eval_every and step % eval_every == 0) or (not eval_every and epoch_done):
                    metrics = evaluate()
                    weights = generator.structural_weights()
                    row = {
                        "step": step,
                        "epoch": epoch + (1 if epoch_done else (i + batch) / n),
                        "loss": running / count,
                    }
                    row.update(metrics)
                    if weights is not None:
                        row["structural_weights"] = weights.detach().tolist()
                    row["wall_seconds"] = time.perf_counter() - start
                    recorder.log(row)
                    running, count = 0.0, 0
                if step >= total:
                    break
            epoch += 1
    finally:
        if bar:
            bar.close()
    return LoopResult(metrics=metrics, steps=step, epochs=epoch)
