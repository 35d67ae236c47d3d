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
_CONTROLLED = {"crx": qml.CRX, "cry": qml.CRY, "crz": qml.CRZ, "crot": qml.CRot}


def _cu3(angles, control: int, target: int) -> None:
    """Controlled U3(t, p, l) = CRot(l, t, p) then PhaseShift((p + l) / 2) on the control: U3 is
    exp(i (p + l) / 2) Rz(p) Ry(t) Rz(l), and a control makes that phase relative. Written with
    gates that have shift rules, so lightning.qubit's parameter-shift differentiates it too
    (qml.ctrl(qml.U3) has none); tests/test_controlled.py checks it against qml.ctrl(qml.U3)."""
    t, p, lam = angles[0], angles[1], angles[2]
    qml.CRot(lam, t, p, wires=[control, target])
    qml.PhaseShift((p + lam) / 2, wires=control)


def diff_method(device: str) -> str:
    return "backprop" if device == "default.qubit" else "parameter-shift"


@lru_cache(maxsize=64)
def _qnode(cand: Candidate, n: int, device: str):
    if device not in DEVICES:
        raise ValueError(f"backend.device={device!r} is not supported; allowed: {', '.join(DEVICES)}")
    dev = qml.device(device, wires=n)
    rotations = [_ROTATIONS[axis] for axis in cand.rotation.axes]
    pairs = cand.entangler.pairs_on(n)
    gate, m = cand.entangler.gate, cand.entangler.n_angles
    two_qubit = {"cnot": qml.CNOT, "cz": qml.CZ}.get(gate)

    @qml.qnode(dev, interface="torch", diff_method=diff_method(device))
    def circuit(theta, phi=None):
        if cand.hadamard:
            for q in range(n):
                qml.Hadamard(wires=q)
        for layer in range(theta.shape[0]):
            for j, (control, target) in enumerate(pairs):
                if two_qubit is not None:
                    two_qubit(wires=[control, target])
                elif gate == "cu3":
                    _cu3(phi[layer, j], control, target)
                else:
                    _CONTROLLED[gate](*phi[layer, j, :m], wires=[control, target])
            for q in range(n):
                for k, rotation in enumerate(rotations):
                    rotation(theta[layer, q] if theta.dim() == 2 else theta[layer, q, k], wires=q)
        return qml.probs(wires=range(n))

    return circuit


def probabilities(
    theta: torch.Tensor, cands: Sequence[Candidate], device: str = "default.qubit", phi: torch.Tensor | None = None
) -> torch.Tensor:
    """theta: (L, n), or (L, n, k) when candidates have up to k rotations per wire (each its first
    ones); phi (L, P, m): parametrised entanglers' angles (pair j of layer l uses phi[l, j, :m])."""
    from .native import check_phi  # the same shape rule as the native simulator

    n = theta.shape[1]
    for c in cands:
        if c.rotation.n_angles > (1 if theta.dim() == 2 else theta.shape[2]):
            raise ValueError(f"candidate {c.number} ({c.name}) needs {c.rotation.n_angles} angles per wire")
    check_phi(phi, cands, theta.shape[0], n)
    out = []
    for c in cands:
        qnode = _qnode(c, n, device)
        out.append((qnode(theta, phi.to(theta.dtype)) if c.entangler.parametrised else qnode(theta)).to(theta.dtype))
    return torch.stack(out)
