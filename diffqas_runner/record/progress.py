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
        self.done = done
        self.start = time.perf_counter()
        # The ETA's clock starts after the first step: that step pays one-off costs (the C++
        # kernel's first build, about a minute; lazy initialisation) that later steps do not.
        self.timed_from: tuple[float, int] | None = None
        self.bar = None

    def _first_step(self) -> None:
        self.timed_from = (time.perf_counter(), self.done)
        if self.mode == "bar":  # shown from here on, so tqdm's rate never includes the first step
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc="train", unit=self.unit, leave=False)

    @classmethod
    def choose(cls, setting: str, interactive: bool) -> str:
        """progress=on: a bar; off: nothing; auto: a bar on a terminal, else lines."""
        if setting == "on":
            return "bar"
        if setting == "off":
            return "off"
        return "bar" if interactive and sys.stderr.isatty() else "lines"

    def skip(self, n: int) -> None:
        """Count `n` units done before this process started (a resumed run): not timed."""
        self.done = min(self.done + n, self.total)

    def advance(self, n: int = 1, **postfix: Any) -> None:
        n = min(n, self.total - self.done)
        self.done += n
        if self.timed_from is None:
            if not n:  # RL: updates that finished no episode yet (the first pays the kernel's build)
                return
            self._first_step()
        elif self.bar is not None and n:
            self.bar.update(n)
        if self.bar is not None and postfix:
            self.bar.set_postfix(postfix)

    def report(self, row: dict[str, Any], where: str) -> None:
        """One line for an evaluation row (lines mode only): `where` says e.g. 'epoch 3'."""
        if self.mode != "lines":
            return
        now = time.perf_counter()
        elapsed = now - self.start
        since, first = self.timed_from or (now, self.done)
        rate = (self.done - first) / (now - since) if now > since else 0.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else ("0:00" if self.done >= self.total else "?")
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
