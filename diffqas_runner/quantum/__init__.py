"""Quantum circuits of DiffQAS: candidates, search spaces (paper12 by default) and the simulators."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .candidates import CANDIDATES, N_CANDIDATES, Candidate, Entangler, Rotation, build_space, candidate

BACKENDS = ("native", "pennylane")

__all__ = [
    "BACKENDS",
    "CANDIDATES",
    "N_CANDIDATES",
    "Candidate",
    "Entangler",
    "Rotation",
    "build_space",
    "candidate",
    "candidate_probabilities",
    "mixture",
    "probabilities",
]


def probabilities(
    theta: torch.Tensor,
    cands: Sequence[Candidate],
    backend: str = "native",
    device: str = "default.qubit",
    memory_mb: int | None = None,
    phi: torch.Tensor | None = None,
) -> torch.Tensor:
    """Probabilities (len(cands), 2**n) of several candidates for shared angles theta (L, n), or
    (L, n, k) when candidates have up to k rotations per wire, and phi (L, P, m) the angles of
    parametrised entanglers (CRx, ..., CU3: pair j of layer l uses phi[l, j, :m]; None when no
    candidate has one). memory_mb (native only): the simulation's budget per step, met by
    simulating candidates in chunks (None: half of what the machine has free)."""
    if backend == "native":
        from . import native

        return native.probabilities(theta, cands, memory_mb, phi)
    if backend == "pennylane":
        from . import pennylane

        return pennylane.probabilities(theta, cands, device, phi)
    raise ValueError(f"backend={backend!r} is not supported; allowed: {', '.join(BACKENDS)}")


def mixture(
    weights: torch.Tensor,
    theta: torch.Tensor,
    cands: Sequence[Candidate],
    backend: str = "native",
    device: str = "default.qubit",
    memory_mb: int | None = None,
    phi: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ensemble sum_j weights[j] P_j (2**n,) of `probabilities`' rows (same arguments): on the
    native backend one product per simulated block (no matrix of all rows is gathered first)."""
    if backend == "native":
        from . import native

        return native.mixture(weights, theta, cands, memory_mb, phi)
    return weights @ probabilities(theta, cands, backend, device, memory_mb, phi)


def candidate_probabilities(
    arch: int, theta: torch.Tensor, backend: str = "native", space: Sequence[Candidate] | None = None, **kwargs
) -> torch.Tensor:
    """The 2**n probabilities (float64, qubit 0 most significant) of candidate `arch` (1..len(space))
    of `space` (default paper12; e.g. `config.search_space_file("wide32")`). theta: (L, n), or
    (L, n, k) for a candidate with k rotations per wire; `phi=` (L, pairs, m) for a parametrised
    entangler's angles."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    if kwargs.get("phi") is not None:
        kwargs["phi"] = torch.as_tensor(kwargs["phi"], dtype=torch.float64)
    return probabilities(theta, [candidate(arch, CANDIDATES if space is None else space)], backend, **kwargs)[0]
