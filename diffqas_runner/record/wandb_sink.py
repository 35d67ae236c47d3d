"""Weights & Biases sink: created inside the job (never pickled across processes), closed in finally."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class WandbSink:
    def __init__(self, cfg, run_dir: Path, config: dict, group: str | None, name: str | None, run_id: str | None = None):
        import wandb

        self._wandb = wandb
        kwargs = dict(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or group,
            name=name,
            tags=list(cfg.tags),
            dir=str(run_dir),
            config=config,
            reinit="finish_previous",
            id=run_id,  # a resumed run continues its wandb run
            resume="allow" if run_id else None,
        )
        mode = cfg.mode.value
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as err:  # no network, no login, server down: the experiment must still run
            if mode != "online":
                raise
            log.warning(
                "wandb online is unavailable (%s: %s); falling back to offline mode: upload later with `wandb sync %s`",
                type(err).__name__, str(err).splitlines()[0] if str(err) else "", run_dir / "wandb",
            )  # fmt: skip
            mode = "offline"
            self.run = wandb.init(mode=mode, **kwargs)
        self.mode = mode
        self.run_id = self.run.id
        log.info("wandb run %s (%s mode)", self.run.id, mode)

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

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
