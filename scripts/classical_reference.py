#!/usr/bin/env python
"""The classical reference (the ceiling): the task's target network trained directly, no Quantum-Train.

Same data, split, optimiser, batch, epochs (and `train.max_steps`) and lr schedule as
`diffqas-run task=TASK` (read from the task's config), but the weights (the LSTM's 1,781, or the
MLP's 108,866 / 109,386 for two / ten classes) are trained as ordinary parameters. Prints the
final test and train metric per seed, and each trained tensor's spread as std * sqrt(fan_in): under
`qt.tensor_scale=standardize` every generated tensor has that figure fixed at 1.0, so this shows
which tensors a free fit wants larger or smaller. `--constrain` trains the same LSTM with each
tensor re-parametrised as standardize(v) / sqrt(fan_in) (torch.nn.utils.parametrize), the
constraint `qt.tensor_scale=standardize` (the library default; the time-series tasks set `none`)
puts on the generator's output, but with no circuit: it separates what the constraint costs from
what the circuit costs.

    python scripts/classical_reference.py [--task damped_shm] [--seeds 0,1,2] [--constrain] [overrides ...]
    python scripts/classical_reference.py --task mnist task.classes=all train.max_steps=600 data_dir=../shared/data
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from hydra import compose, initialize_config_dir

from diffqas_runner.cli import CONFIG_DIR
from diffqas_runner.config import choice
from diffqas_runner.qt.generator import fan_in, standardize
from diffqas_runner.run import build_optimizer, build_scheduler
from diffqas_runner.tasks import build as build_task
from diffqas_runner.train.supervised import total_steps


def spread(p: torch.Tensor) -> float:
    """std * sqrt(fan_in), the figure `qt.tensor_scale=standardize` fixes at 1 (0 for one element)."""
    if p.numel() == 1:
        return 0.0
    return p.detach().std().item() * math.sqrt(fan_in(p.shape))


class Standardized(torch.nn.Module):
    """v -> standardize(v) / sqrt(fan_in): `qt.tensor_scale=standardize` on a free tensor."""

    def __init__(self, shape: torch.Size):
        super().__init__()
        self.factor = 1.0 / math.sqrt(fan_in(shape))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return standardize(v) * self.factor


def train_one(cfg, seed: int, constrain: bool = False) -> tuple[dict, dict, float]:
    torch.manual_seed(seed)
    task = build_task(cfg.task, cfg.data_dir, cfg.download, seed)
    model = task.build_model()
    if constrain:
        from torch.nn.utils import parametrize

        for name, p in list(model.named_parameters()):
            if p.numel() > 1:  # a lone output bias stays free, as in the generator
                module_name, _, attr = name.rpartition(".")
                parametrize.register_parametrization(model.get_submodule(module_name), attr, Standardized(p.shape))
    optimizer = build_optimizer(model.parameters(), cfg.train)
    batch = cfg.train.batch_size
    n = len(task.train.y)
    steps = total_steps(n, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps)
    per_epoch = math.ceil(n / batch)
    start = time.perf_counter()
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(n)
        idx = order[(step % per_epoch) * batch :][:batch]
        loss = task.loss(model(task.train.x[idx]), task.train.y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    with torch.no_grad():
        # the effective tensors (through any parametrisation), in named_parameters() order
        names = [n.replace("parametrizations.", "").replace(".original", "") for n, _ in model.named_parameters()]
        spreads = {n: spread(getattr(model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2])) for n in names}
    return task.evaluate(model), spreads, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="damped_shm", help="a time-series task: bessel, damped_shm, ...")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--constrain", action="store_true", help="each tensor standardised, as the QT default")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.lr_schedule=constant")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"task={args.task}", *args.overrides])
    if choice(cfg.task.kind) == "rl":
        raise SystemExit(f"--task={args.task!r} is an RL task; allowed: a classification or time-series task")
    torch.set_num_threads(1)
    what = "standardised per tensor" if args.constrain else "free"
    print(
        f"task={args.task}: classical target ({what}), {choice(cfg.train.optimizer)} lr {cfg.train.lr} "
        f"({choice(cfg.train.lr_schedule)}), batch {cfg.train.batch_size}, {cfg.train.epochs} epochs, "
        f"max_steps {cfg.train.max_steps}"
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        metrics, spreads, seconds = train_one(cfg, seed, args.constrain)
        gains = ", ".join(f"{k} {v:.2f}" for k, v in spreads.items() if v)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"seed {seed}: {shown}  ({seconds:.1f} s)  std*sqrt(fan_in): {gains}")


if __name__ == "__main__":
    main()
