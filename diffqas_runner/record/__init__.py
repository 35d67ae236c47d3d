"""Everything a run writes goes through the Recorder: local files and, optionally, wandb."""

from .files import Recorder

__all__ = ["Recorder"]
