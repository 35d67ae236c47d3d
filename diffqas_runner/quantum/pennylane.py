"""The candidate circuits as PennyLane QNodes (imported lazily: only this backend needs it).

default.qubit runs with the torch interface and backprop. lightning.qubit's adjoint method
does not differentiate `qml.probs` (it supports expectation values only), so it runs with
parameter-shift: exact, but two circuit evaluations per angle.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import pennylane as qml
import torch

from ..config import PennyLaneDevice
from .candidates import Candidate, Rotation, cnot_pairs

DEVICES = tuple(d.value for d in PennyLaneDevice)  # the schema's list (config.py)
_GATES = {Rotation.RX: qml.RX, Rotation.RY: qml.RY, Rotation.RZ: qml.RZ}


def diff_method(device: str) -> str:
    return "backprop" if device == "default.qubit" else "parameter-shift"


@lru_cache(maxsize=64)
def _qnode(cand: Candidate, n: int, device: str):
    if device not in DEVICES:
        raise ValueError(f"backend.device={device!r} is not supported; allowed: {', '.join(DEVICES)}")
    dev = qml.device(device, wires=n)
    gate = _GATES[cand.rotation]
    pairs = cnot_pairs(cand.entangler, n)

    @qml.qnode(dev, interface="torch", diff_method=diff_method(device))
    def circuit(theta):
        if cand.hadamard:
            for q in range(n):
                qml.Hadamard(wires=q)
        for layer in range(theta.shape[0]):
            for control, target in pairs:
                qml.CNOT(wires=[control, target])
            for q in range(n):
                gate(theta[layer, q], wires=q)
        return qml.probs(wires=range(n))

    return circuit


def probabilities(theta: torch.Tensor, cands: Sequence[Candidate], device: str = "default.qubit") -> torch.Tensor:
    n = theta.shape[1]
    return torch.stack([_qnode(c, n, device)(theta).to(theta.dtype) for c in cands])
