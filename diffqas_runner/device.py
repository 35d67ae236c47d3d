"""Where a run's tensors live: one function places everything a training step touches."""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

import torch
from torch import nn

from .config import BackendName, choice


def run_device(backend_cfg) -> torch.device:
    """The torch device of a run: `backend.device` for the native simulator; PennyLane runs on the CPU."""
    if choice(backend_cfg.name) == BackendName.native.value:
        return torch.device(backend_cfg.device)
    return torch.device("cpu")


def _to(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if is_dataclass(value) and not isinstance(value, type):  # a data split: move its tensors
        return replace(value, **{f.name: _to(getattr(value, f.name), device) for f in fields(value)})
    return value


def place(device: torch.device, task, *modules: nn.Module) -> None:
    """Move the modules (target network, generator) and the task's data splits to `device`, and tell
    the task (an RL task turns its observations into tensors on `task.device`)."""
    for module in modules:
        module.to(device)
    for name, value in list(vars(task).items()):
        if is_dataclass(value) and not isinstance(value, type):
            setattr(task, name, _to(value, device))
    task.device = device
