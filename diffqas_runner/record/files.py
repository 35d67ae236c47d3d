"""Local run files: metrics.jsonl (appended), summary.json and model.pt (atomic, written last)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """`write(tmp)`, fsync, then rename over `path` and fsync the directory: readers see the old
    file or the whole new one, never half, and the new one survives a crash (NFS/Lustre included).
    The temporary name is unique to the process, so two writers never share one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a line cut short (a killed run) or damaged is left out."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class Recorder:
    def __init__(self, run_dir: str | Path, sinks=(), resume_step: int | None = None):
        """`resume_step`: continuing from a checkpoint at that step, so rows logged after it are dropped
        (they will be logged again); None starts metrics.jsonl afresh."""
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sinks = list(sinks)  # objects with log(dict, step), summary(dict), close(), run_id and optionally figure(name, path)
        self.summary_path = self.dir / "summary.json"
        self.summary_path.unlink(missing_ok=True)  # a summary means "finished": never a stale one
        path = self.dir / "metrics.jsonl"
        keep = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the kill
                    continue
                if row.get("step", 0) <= resume_step:
                    keep.append(line + "\n")
        atomic_write(path, lambda p: p.write_text("".join(keep)))
        self._metrics = path.open("a")

    def run_id(self) -> str | None:
        """The wandb run id (kept in checkpoints so a resumed run continues the same wandb run)."""
        return next((sink.run_id for sink in self.sinks if getattr(sink, "run_id", None)), None)

    def log(self, row: dict[str, Any]) -> None:
        row = {k: _jsonable(v) for k, v in row.items()}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        for sink in self.sinks:
            sink.log(row, step=row.get("step"))

    def rows(self) -> list[dict[str, Any]]:
        """Every row logged so far (a resumed run's earlier rows too)."""
        self._metrics.flush()
        return read_rows(self.dir / "metrics.jsonl")

    def save_model(self, state_dict: dict[str, torch.Tensor]) -> None:
        plain = {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}
        atomic_write(self.dir / "model.pt", lambda p: torch.save(plain, p))

    def save_figure(self, name: str, figure) -> None:
        atomic_write(self.dir / name, lambda p: figure.savefig(p, format=Path(name).suffix[1:], dpi=120))
        for sink in self.sinks:
            if hasattr(sink, "figure"):
                sink.figure(name, self.dir / name)

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2)
        atomic_write(self.summary_path, lambda p: p.write_text(text + "\n"))
        for sink in self.sinks:
            sink.summary(summary)

    def close(self, exit_code: int = 0) -> None:
        """`exit_code`: what the run ends with (0 done, 2 failed, 128 + signal stopped), for wandb."""
        self._metrics.close()
        for sink in self.sinks:
            sink.close(exit_code)
