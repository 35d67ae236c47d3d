"""Tasks: data (or environment), the classical target network and its metric. No circuits here."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, choice


def higher_is_better(metric: str) -> bool:
    """Direction of a metric: errors and losses go down, accuracy and return go up."""
    return not any(word in metric for word in ("mse", "loss"))


def build(task_cfg, data_dir: str | Path, download: bool = False, seed: int = 0):
    kind = choice(task_cfg.kind)
    if kind == "classification":
        from .classification import DATASETS, ClassificationTask

        if task_cfg.name not in DATASETS:
            raise ConfigError(f"task.name={task_cfg.name!r} is not allowed; allowed for classification: {', '.join(DATASETS)}")
        return ClassificationTask(
            task_cfg.name, data_dir, task_cfg.classes, task_cfg.hidden, download, validation=task_cfg.validation, seed=seed,
            model=choice(task_cfg.model),
        )  # fmt: skip
    if kind == "timeseries":
        from .timeseries import SERIES, TimeSeriesTask

        if task_cfg.name not in SERIES:
            raise ConfigError(f"task.name={task_cfg.name!r} is not allowed; allowed for timeseries: {', '.join(SERIES)}")
        return TimeSeriesTask(
            task_cfg.name,
            task_cfg.hidden[0],
            task_cfg.window,
            task_cfg.train_fraction,
            task_cfg.length,
            validation=task_cfg.validation,
            variant=task_cfg.variant,
        )
    if kind == "rl":
        from .minigrid import MiniGridTask

        try:
            return MiniGridTask(task_cfg.env_id, task_cfg.hidden)
        except Exception as err:  # gymnasium: NameNotFound / Error for an unknown id
            raise ConfigError(f"task.env_id={task_cfg.env_id!r} cannot be made ({type(err).__name__}: {err})") from err
    raise ConfigError(f"task.kind={kind!r} is not implemented; allowed: classification, timeseries, rl")
