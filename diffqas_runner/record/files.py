"""Local run files: metrics.jsonl (appended), summary.json and model.pt (atomic, written last)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Recorder:
    def __init__(self, run_dir: str | Path, sinks=()):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sinks = list(sinks)  # objects with log(dict, step) and close()
        self.summary_path = self.dir / "summary.json"
        self.summary_path.unlink(missing_ok=True)  # a summary means "finished": never a stale one
        self._metrics = (self.dir / "metrics.jsonl").open("a")

    def log(self, row: dict[str, Any]) -> None:
        row = {k: _jsonable(v) for k, v in row.items()}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        for sink in self.sinks:
            sink.log(row, step=row.get("step"))

    def save_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        plain = {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
        _atomic(self.dir / "model.pt", lambda p: torch.save(plain, p))

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2)
        _atomic(self.summary_path, lambda p: p.write_text(text + "\n"))
        for sink in self.sinks:
            sink.summary(summary)

    def close(self) -> None:
        self._metrics.close()
        for sink in self.sinks:
            sink.close()
