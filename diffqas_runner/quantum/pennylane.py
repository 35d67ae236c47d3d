"""Any candidate circuit as a PennyLane QNode (imported lazily: only this backend needs it).

default.qubit runs with the torch interface and backprop. lightning.qubit's adjoint method
does not differentiate `qml.probs` (it supports expectation values only), so it runs with
parameter-shift: exact, but two circuit evaluations per angle.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import pennylane as qml
import torch

from .candidates import Candidate

DEVICES = ("default.qubit", "lightning.qubit")  # the CLI's schema offers the same (tested)
_ROTATIONS = {"X": qml.RX, "Y": qml.RY, "Z": qml.RZ}


def diff_method(device: str) -> str:
    return "backprop" if device == "default.qubit" else "parameter-shift"


@lru_cache(maxsize=64)
def _qnode(cand: Candidate, n: int, device: str):
    if device not in DEVICES:
        raise ValueError(f"backend.device={device!r} is not supported; allowed: {', '.join(DEVICES)}")
    dev = qml.device(device, wires=n)
    rotations = [_ROTATIONS[axis] for axis in cand.rotation.axes]
    pairs = cand.entangler.pairs_on(n)
    two_qubit = qml.CNOT if cand.entangler.gate == "cnot" else qml.CZ

    @qml.qnode(dev, interface="torch", diff_method=diff_method(device))
    def circuit(theta):
        if cand.hadamard:
            for q in range(n):
                qml.Hadamard(wires=q)
        for layer in range(theta.shape[0]):
            for control, target in pairs:
                two_qubit(wires=[control, target])
            for q in range(n):
                for k, rotation in enumerate(rotations):
                    rotation(theta[layer, q] if theta.dim() == 2 else theta[layer, q, k], wires=q)
        return qml.probs(wires=range(n))

    return circuit


def probabilities(theta: torch.Tensor, cands: Sequence[Candidate], device: str = "default.qubit") -> torch.Tensor:
    """theta: (L, n), or (L, n, k) when candidates have up to k rotations per wire (each its first ones)."""
    n = theta.shape[1]
    for c in cands:
        if c.rotation.n_angles > (1 if theta.dim() == 2 else theta.shape[2]):
            raise ValueError(f"candidate {c.number} ({c.name}) needs {c.rotation.n_angles} angles per wire")
    return torch.stack([_qnode(c, n, device)(theta).to(theta.dtype) for c in cands])
