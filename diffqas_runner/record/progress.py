"""What a user sees while a run trains: a tqdm bar on a terminal, one log line per evaluation elsewhere.

A run in a log file, CI or a SLURM job has no terminal, so a bar would print nothing useful
there; instead every evaluation (every metrics row) becomes one line with the step, the epoch or
episode, the task's main metric, the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("diffqas_runner")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """`mode`: "bar" (tqdm), "lines" (one log line per reported row) or "off"."""

    def __init__(self, mode: str, total: int, unit: str, metric: str, done: int = 0):
        self.mode, self.total, self.unit, self.metric = mode, total, unit, metric
        self.done = self.first = done
        self.start = time.perf_counter()
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, desc="train", unit=unit, leave=False)

    @classmethod
    def choose(cls, setting: str, interactive: bool) -> str:
        """progress=on: a bar; off: nothing; auto: a bar on a terminal, else lines."""
        if setting == "on":
            return "bar"
        if setting == "off":
            return "off"
        return "bar" if interactive and sys.stderr.isatty() else "lines"

    def advance(self, n: int = 1, **postfix: Any) -> None:
        n = min(n, self.total - self.done)
        self.done += n
        if self.bar is not None and n:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix)

    def report(self, row: dict[str, Any], where: str) -> None:
        """One line for an evaluation row (lines mode only): `where` says e.g. 'epoch 3'."""
        if self.mode != "lines":
            return
        elapsed = time.perf_counter() - self.start
        rate = (self.done - self.first) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "?"
        value = row.get(self.metric)
        shown = f"{self.metric} {value:.4g}" if isinstance(value, int | float) else f"{self.metric} -"
        loss = row.get("loss")
        extra = f", loss {loss:.4g}" if isinstance(loss, int | float) else ""
        log.info(
            "%s %d/%d (%s): %s%s | elapsed %s, ETA %s",
            self.unit, self.done, self.total, where, shown, extra, _clock(elapsed), eta,
        )  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
