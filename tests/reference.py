"""A textbook dense state-vector simulator, sharing no code with diffqas_runner.quantum.

It reads only the plain fields of a Candidate (init, entangler.gate / pattern / pairs,
rotation.axes) and derives each named pattern's pairs from the language written down in
docs/design.md ("The search-space language"), not from `Entangler.pairs_on`. Gates are explicit
numpy complex128 matrices (H, CNOT and CZ as 4x4 matrices, R_a(t) = exp(-i t sigma_a / 2) written
out), applied one by one by reshaping the state to (2,) * n and contracting on the gate's wires.
Qubit 0 is the most significant bit (axis 0 of the reshaped state).

No autograd: values only (gradients: `directional_derivative`, a central difference).
"""

from __future__ import annotations

import numpy as np
import torch

I2 = np.eye(2, dtype=np.complex128)
PAULI = {
    "X": np.array([[0, 1], [1, 0]], dtype=np.complex128),
    "Y": np.array([[0, -1j], [1j, 0]], dtype=np.complex128),
    "Z": np.array([[1, 0], [0, -1]], dtype=np.complex128),
}
H = np.array([[1, 1], [1, -1]], dtype=np.complex128) / np.sqrt(2)
# Two-qubit gates on (control, target), basis |control target> = |00>, |01>, |10>, |11>
CNOT = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=np.complex128)
CZ = np.diag([1, 1, 1, -1]).astype(np.complex128)
TWO_QUBIT = {"cnot": CNOT, "cz": CZ}


def u3(t: float, p: float, lam: float) -> np.ndarray:
    """U3 as Qiskit and PennyLane write it out (with its phase)."""
    c, s = np.cos(t / 2), np.sin(t / 2)
    return np.array([[c, -np.exp(1j * lam) * s], [np.exp(1j * p) * s, np.exp(1j * (p + lam)) * c]], dtype=np.complex128)


def controlled(gate: str, angles) -> np.ndarray:
    """A parametrised controlled gate as its 4x4 matrix [[I, 0], [0, U]] on |control target>:
    U = R_a(t) for CRa, Rz(c) Ry(b) Rz(a) for CRot(a, b, c), U3 for CU3."""
    if gate in ("crx", "cry", "crz"):
        u = rotation(gate[-1].upper(), angles[0])
    elif gate == "crot":
        u = rotation("Z", angles[2]) @ rotation("Y", angles[1]) @ rotation("Z", angles[0])
    elif gate == "cu3":
        u = u3(*angles[:3])
    else:
        raise ValueError(f"unknown gate {gate!r}")
    out = np.eye(4, dtype=np.complex128)
    out[2:, 2:] = u
    return out


ANGLES_PER_PAIR = {"crx": 1, "cry": 1, "crz": 1, "crot": 3, "cu3": 3}


def rotation(axis: str, t: float) -> np.ndarray:
    """R_axis(t) = exp(-i t sigma / 2) = cos(t/2) I - i sin(t/2) sigma (sigma^2 = I)."""
    return np.cos(t / 2) * I2 - 1j * np.sin(t / 2) * PAULI[axis]


def pattern_pairs(pattern: str, n: int) -> list[tuple[int, int]]:
    """(control, target) pairs of a named pattern, in application order, as docs/design.md says."""
    if pattern == "chain":  # bricks on even-started pairs first, then odd-started ones
        return [(q, q + 1) for q in range(n - 1) if q % 2 == 0] + [(q, q + 1) for q in range(n - 1) if q % 2 == 1]
    if pattern == "ring":  # 0->1, 1->2, ..., n-2->n-1, then n-1->0
        return [(q, q + 1) for q in range(n - 1)] + [(n - 1, 0)]
    if pattern == "all_to_all":  # every pair once, the lower wire controls, in lexicographic order
        return [(a, b) for a in range(n) for b in range(n) if a < b]
    if pattern == "stride2":  # q -> q+2 for q = 0..n-3
        return [(q, q + 2) for q in range(n) if q + 2 < n]
    if pattern == "none":
        return []
    raise ValueError(f"unknown pattern {pattern!r}")


def pairs(cand, n: int) -> list[tuple[int, int]]:
    ent = cand.entangler
    return [tuple(p) for p in ent.pairs] if ent.pattern is None else pattern_pairs(ent.pattern, n)


def apply(state: np.ndarray, gate: np.ndarray, wires: tuple[int, ...]) -> np.ndarray:
    """A k-qubit gate (2**k x 2**k, its first wire the most significant) on `wires` of a (2,)*n state."""
    k = len(wires)
    g = gate.reshape((2,) * (2 * k))
    out = np.tensordot(g, state, axes=(list(range(k, 2 * k)), list(wires)))  # gate's outputs first
    return np.moveaxis(out, list(range(k)), list(wires))


def _numpy(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().double() if isinstance(x, torch.Tensor) else x, dtype=np.float64)


def state(theta, cand, phi=None) -> np.ndarray:
    """The final state (2**n,) for angles theta (L, n) or (L, n, k); the j-th rotation of a wire
    uses angle slot j. A parametrised entangler's pair j in layer l uses phi[l, j, :m]."""
    theta = _numpy(theta)
    if theta.ndim == 2:
        theta = theta[..., None]
    layers, n = theta.shape[:2]
    axes = tuple(cand.rotation.axes)
    assert len(axes) <= theta.shape[2], "theta carries too few angles per wire"
    psi = np.zeros((2,) * n, dtype=np.complex128)
    psi[(0,) * n] = 1.0
    if cand.init == "H":
        for q in range(n):
            psi = apply(psi, H, (q,))
    gate = cand.entangler.gate
    layer_pairs = pairs(cand, n)
    for layer in range(layers):
        for j, (c, t) in enumerate(layer_pairs):
            two = TWO_QUBIT[gate] if gate in TWO_QUBIT else controlled(gate, _numpy(phi)[layer, j])
            psi = apply(psi, two, (c, t))
        for q in range(n):
            for j, axis in enumerate(axes):
                psi = apply(psi, rotation(axis, theta[layer, q, j]), (q,))
    return psi.reshape(-1)


def probabilities(theta, cands, phi=None) -> torch.Tensor:
    """(len(cands), 2**n) float64 probabilities, qubit 0 the most significant bit."""
    return torch.from_numpy(np.stack([np.abs(state(theta, c, phi)) ** 2 for c in cands]))


def directional_derivative(
    theta: torch.Tensor, cands, coeffs: torch.Tensor, direction: torch.Tensor, eps=1e-4, phi=None, phi_direction=None
) -> float:
    """d/ds sum(coeffs * probabilities(theta + s direction, phi + s phi_direction)) at s = 0, by a
    fourth-order central difference (error ~ eps^4, rounding ~ 1e-16 / eps)."""

    def f(s):
        moved = None if phi is None else phi.detach() + s * phi_direction
        return float((coeffs * probabilities(theta.detach() + s * direction, cands, moved)).sum())

    return (8 * (f(eps) - f(-eps)) - (f(2 * eps) - f(-2 * eps))) / (12 * eps)
