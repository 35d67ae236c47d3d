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
from contextlib import contextmanager
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

    def __init__(self, signum: int, step: int, path: Path | None):
        self.signum, self.step, self.path = signum, step, path
        name = signal.Signals(signum).name
        if path is None:
            super().__init__(f"{name} before the first step: nothing to save; rerun the same command to start again")
        else:
            super().__init__(f"{name} at step {step}: checkpoint saved to {path}; rerun the same command to resume")


def rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load(path: str | Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # torch's message runs to many lines (and suggests weights_only=False: never)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise ValueError(f"{path} is not a readable checkpoint ({first})") from None
    keys = {"version", "finished", "state", "loop", "rng", "meta"}
    ok = isinstance(ckpt, dict) and ckpt.get("version") == VERSION and keys <= ckpt.keys()
    if not ok or not isinstance(ckpt["meta"], dict) or "fingerprint" not in ckpt["meta"]:
        raise ValueError(f"{path} is not a diffqas-runner checkpoint (version {VERSION})")
    return ckpt


class StopRequested(BaseException):
    """Raised by the signal handler inside an interruptible region (a BaseException, so no
    `except Exception` in between swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """While active, SIGTERM and SIGINT ask the run to stop (a second SIGINT stops at once).

    Outside `immediate()` regions the handler only records the signal, and the loop answers it
    at the end of the step (checkpoint, then stop). Inside them (a step's forward and backward,
    building the experiment: work that leaves nothing half-written when abandoned) the handler
    raises `StopRequested` at once, so a long step never delays the answer.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._immediate = 0

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self._immediate:
            raise StopRequested(signum)

    @contextmanager
    def immediate(self):
        if self.signum is not None:
            raise StopRequested(self.signum)
        self._immediate += 1
        try:
            yield
        finally:
            self._immediate -= 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Checkpointer:
    """Saves and restores `objects` ({name: has state_dict/load_state_dict}) plus loop state and RNGs."""

    def __init__(
        self, path: Path, every: int | None, objects: dict[str, Any], meta: dict[str, Any], signals: StopSignals | None = None
    ):
        self.path = Path(path)
        self.every = every
        self.objects = objects
        self.meta = meta  # config fingerprint, wandb run id: stored as given
        self.signals = signals or StopSignals()

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

    def stopped(self, stop: StopRequested, step: int, loop) -> Interrupted:
        """A signal inside a step: the step is abandoned, the state is still the previous step's,
        so save that and return the Interrupted to raise."""
        self.save(loop())
        return Interrupted(stop.signum, step, self.path)

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


def differing_keys(a: str, b: str, added: dict[str, Any] | None = None) -> list[str]:
    """The dotted keys whose values differ between fingerprints a (stored) and b. `added`: options
    added since a may have been written, {key: the value that means what running without the key
    did}; a key missing from a counts as that value where b has it (so a new option at its default
    does not make an older checkpoint another run's; an option only some task kinds have, such as
    `task.model`, stays absent from both for the others)."""
    return [key for key, _, _ in differences(a, b, added)]


class _Unset:
    def __repr__(self) -> str:
        return "unset"


UNSET = _Unset()  # a key one fingerprint lacks


def differences(a: str, b: str, added: dict[str, Any] | None = None) -> list[tuple[str, Any, Any]]:
    """`differing_keys` with their values: (key, value in a, value in b), UNSET where one lacks it."""
    fa, fb = flatten(json.loads(a)), flatten(json.loads(b))
    for key, value in (added or {}).items():
        if key in fb:
            fa.setdefault(key, value)
    # a key one side lacks equals null on the other (options added at a null default, such as
    # backend.memory_mb or task.variant, keep older checkpoints resumable); UNSET only shows it
    keys = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    return [(k, fa.get(k, UNSET), fb.get(k, UNSET)) for k in keys]


def describe_differences(a: str, b: str, added: dict[str, Any] | None = None) -> str:
    """The differences of fingerprints a (a checkpoint's) and b (this run's) for a message, e.g.
    "train.lr: 0.001 there, 0.5 now; seed: 0 there, 1 now"."""

    def shown(value) -> str:
        return "unset" if value is UNSET else json.dumps(value)

    return "; ".join(f"{k}: {shown(old)} there, {shown(new)} now" for k, old, new in differences(a, b, added))
