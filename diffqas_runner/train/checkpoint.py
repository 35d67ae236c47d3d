"""Checkpoints: everything a run needs to continue bit for bit, written atomically.

A checkpoint holds the state_dicts of the trainable objects (generator, optimiser, scheduler),
the loop's counters and data order, every RNG state, the run's config fingerprint and the wandb
run id. It is plain tensors and Python primitives, so `torch.load(weights_only=True)` reads it.
SIGTERM (SLURM pre-emption, submitit) and SIGINT ask the loop to save one and stop cleanly.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import flatten
from ..record import atomic_write

CHECKPOINT = "checkpoint.pt"
VERSION = 1


class Interrupted(RuntimeError):
    """The run stopped on a signal after saving a checkpoint; rerunning the command resumes it."""

    def __init__(self, signum: int, step: int, path: Path):
        self.signum, self.step, self.path = signum, step, path
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint saved to {path}; rerun the same command to resume")


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }  # fmt: skip


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def save_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | Path) -> dict[str, Any]:
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(ckpt, dict) or ckpt.get("version") != VERSION:
        raise ValueError(f"{path} is not a diffqas-runner checkpoint (version {VERSION})")
    return ckpt


class StopSignals:
    """While active, SIGTERM and SIGINT set `signum` instead of killing the process (a second SIGINT does)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Checkpointer:
    """Saves and restores `objects` ({name: has state_dict/load_state_dict}) plus loop state and RNGs."""

    def __init__(self, path: Path, every: int | None, objects: dict[str, Any], meta: dict[str, Any]):
        self.path = Path(path)
        self.every = every
        self.objects = objects
        self.meta = meta  # config fingerprint, wandb run id: stored as given
        self.signals = StopSignals()

    def save(self, loop: dict[str, Any], finished: bool = False) -> None:
        save_atomic(
            {
                "version": VERSION,
                "finished": finished,
                "state": {name: obj.state_dict() for name, obj in self.objects.items()},
                "loop": loop,
                "rng": rng_state(),
                "meta": self.meta,
            },
            self.path,
        )

    def restore(self, ckpt: dict[str, Any]) -> dict[str, Any]:
        """Load the objects' states and the RNGs from `ckpt`; return its loop state."""
        for name, obj in self.objects.items():
            obj.load_state_dict(ckpt["state"][name])
        set_rng_state(ckpt["rng"])
        return ckpt["loop"]

    def after_step(self, step: int, loop) -> None:
        """Save when the interval comes round or a stop signal arrived; on a signal, stop the run."""
        stop = self.signals.signum
        if stop is not None or (self.every and step % self.every == 0):
            self.save(loop())
        if stop is not None:
            raise Interrupted(stop, step, self.path)


def fingerprint(config: dict[str, Any], ignore: tuple[str, ...]) -> str:
    """The config keys that decide a run's numbers, as canonical JSON (dotted `ignore` keys dropped)."""
    config = json.loads(json.dumps(config, default=str))
    for dotted in ignore:
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return json.dumps(config, sort_keys=True)


def differing_keys(a: str, b: str) -> list[str]:
    fa, fb = flatten(json.loads(a)), flatten(json.loads(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
