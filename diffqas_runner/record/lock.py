"""One owner per run directory: an OS-level lock (flock) that the kernel drops when the process dies.

A run (or a sweep's launching process) holds `<dir>/.lock` from its start to its exit. A second
process asking for the same directory fails at once with `DirectoryInUse`, naming the holder's
pid; a SIGKILLed holder never leaves a stale lock behind. Within one process a directory is
locked once; `unlock_directory` releases it (run() does for a lock it took, so long in-process
sweeps do not accumulate descriptors), and the OS releases every lock when the process exits.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # directory -> open file descriptor holding its lock


class DirectoryInUse(RuntimeError):
    pass


def lock_directory(directory: Path) -> bool:
    """Lock `directory` for this process; True if this call took the lock (False: already held)."""
    directory = Path(directory).resolve()
    if directory in _held:
        return False
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DirectoryInUse(
            f"{directory} is in use by another diffqas-run (pid {holder}); allowed: a directory no other run is using"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[directory] = fd
    return True


def unlock_directory(directory: Path) -> None:
    fd = _held.pop(Path(directory).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock
