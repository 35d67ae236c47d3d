"""Everything a run writes goes through the Recorder: local files and, optionally, wandb."""

from .files import Recorder, atomic_write

__all__ = ["Recorder", "atomic_write"]
