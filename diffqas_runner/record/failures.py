"""failure.json: what a failed job leaves in its run directory, so a sweep's failures are results."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .files import atomic_write

FAILURE = "failure.json"


def write_failure(run_dir: Path, error: BaseException, step: int | None) -> None:
    """What failed (the error's type and message) and at which step; the config is in .hydra/."""
    record: dict[str, Any] = {
        "error": type(error).__name__,
        "message": str(error),
        "step": step,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / FAILURE, lambda p: p.write_text(json.dumps(record, indent=2) + "\n"))


def clear_failure(run_dir: Path) -> None:
    (run_dir / FAILURE).unlink(missing_ok=True)


def failed_jobs(sweep_dir: Path) -> list[Path]:
    """Job directories under a sweep that hold a failure record and no summary."""
    return sorted(p.parent for p in Path(sweep_dir).rglob(FAILURE) if not (p.parent / "summary.json").exists())
