"""The 12 DiffQAS candidate circuits (SPEC.md section 2) as plain data.

A candidate is: an optional Hadamard layer on every wire, then L layers of
(entangler, rotation on every wire). Numbering follows the paper's tables.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import torch


class Entangler(str, Enum):
    ENT = "Ent"  # open brick: CNOT(0,1),(2,3),... then (1,2),(3,4),...
    CYC = "Cyc"  # closed ring: CNOT(q, q+1 mod n) for q = 0..n-1


class Rotation(str, Enum):
    RX = "Rx"
    RY = "Ry"
    RZ = "Rz"


@dataclass(frozen=True)
class Candidate:
    number: int
    hadamard: bool
    entangler: Entangler
    rotation: Rotation

    @property
    def name(self) -> str:
        parts = (["H"] if self.hadamard else []) + [self.entangler.value, self.rotation.value]
        return "-".join(parts)

    @property
    def theta_independent(self) -> bool:
        """Whether the measured distribution cannot depend on the angles.

        CNOT permutes both the Z basis and the X basis. Rz is diagonal in Z, so with Rz
        the Z-basis magnitudes are only permuted: the output is the initial distribution
        carried through the CNOT permutation. Rx is diagonal in X, so if the start is an
        X basis state (H on |0..0>, i.e. |+..+>) the state stays that X basis state up to
        a phase and the output is uniform. Every other combination depends on theta.
        """
        return self.rotation is Rotation.RZ or (self.rotation is Rotation.RX and self.hadamard)


CANDIDATES: tuple[Candidate, ...] = tuple(
    Candidate(number, hadamard, ent, rot)
    for number, (hadamard, ent, rot) in enumerate(
        itertools.product((True, False), (Entangler.ENT, Entangler.CYC), tuple(Rotation)), start=1
    )
)
N_CANDIDATES = len(CANDIDATES)


def candidate(arch: int) -> Candidate:
    if not isinstance(arch, int) or isinstance(arch, bool) or not 1 <= arch <= N_CANDIDATES:
        raise ValueError(f"arch={arch!r} is not a candidate; allowed: integers 1..{N_CANDIDATES}")
    return CANDIDATES[arch - 1]


def cnot_pairs(entangler: Entangler, n: int) -> list[tuple[int, int]]:
    """(control, target) pairs of one entangling layer, in application order."""
    if n < 2:
        return []
    if entangler is Entangler.ENT:
        return [(q, q + 1) for q in range(0, n - 1, 2)] + [(q, q + 1) for q in range(1, n - 1, 2)]
    return [(q, (q + 1) % n) for q in range(n)]


@lru_cache(maxsize=64)
def entangler_permutation(entangler: Entangler, n: int) -> torch.Tensor:
    """Index map `perm` with (layer psi)[i] = psi[perm[i]], qubit 0 the most significant bit.

    A CNOT layer is a permutation of basis states, so the whole layer is one gather.
    """
    idx = torch.arange(2**n, dtype=torch.int64)
    # Pull-back: the amplitude landing on i came from the preimage of i under the layer,
    # i.e. apply the inverse layer (the CNOTs in reverse order) to the index i.
    src = idx.clone()
    for control, target in reversed(cnot_pairs(entangler, n)):
        cbit = (src >> (n - 1 - control)) & 1
        src = src ^ (cbit << (n - 1 - target))
    return src
