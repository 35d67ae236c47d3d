"""Weights & Biases sink: created inside the job (never pickled across processes), closed in finally."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class WandbSink:
    def __init__(self, cfg, run_dir: Path, config: dict, group: str | None, name: str | None):
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or group,
            name=name,
            tags=list(cfg.tags),
            mode=cfg.mode.value,
            dir=str(run_dir),
            config=config,
            reinit="finish_previous",
        )
        log.info("wandb run %s (%s mode)", self.run.id, cfg.mode.value)

    def log(self, row: dict[str, Any], step: int | None = None) -> None:
        flat = {k: v for k, v in row.items() if isinstance(v, int | float)}
        weights = row.get("structural_weights")
        if weights:
            flat.update({f"structural/w{i + 1:02d}": w for i, w in enumerate(weights)})
        self.run.log(flat, step=step)

    def summary(self, summary: dict[str, Any]) -> None:
        for key, value in (summary.get("metrics") or {}).items():
            self.run.summary[f"final/{key}"] = value
        if summary.get("ranking"):
            self.run.summary["ranking"] = summary["ranking"]

    def close(self) -> None:
        self.run.finish()
