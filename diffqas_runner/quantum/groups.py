"""Which candidates give identical outputs, and which ignore their angles: from structure.

DiffQAS's structural weights of candidates with identical outputs receive identical gradients
and stay equal all run, so a ranking that orders them is only sort tie-breaking. This module
groups them, so rankings, plots and the selection stage treat each group as one circuit.

Structure alone decides (`Candidate.theta_independent(n)`): an angle-independent candidate's
output is its start state carried through signed permutations, so it is uniform when the start
is |+..+> (H first) and |0..0> when the start is |0..0> (CNOT and CZ never move |0..0>). Two
angle-dependent candidates are grouped only when their structure is the same on n wires: the
same start, the same rotation layer and the same entangling layer as a signed permutation of the
basis (so two gate lists that compose to the same layer are one group). At depth 1 the only
entangling layer acts on the start state; when it fixes it (any layer on |0..0>, CNOTs on
|+..+>) it is left out. tests/helpers.py `confirm` checks the grouping numerically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .candidates import Candidate, Entangler, layer_op


def _signature(cand: Candidate, n: int, depth: int | None = None) -> tuple:
    if cand.theta_independent(n, depth):
        return ("uniform",) if cand.hadamard else ("basis-0",)
    if cand.entangler.parametrised:
        # A parametrised entangler is the same circuit only with the same gate on the same pairs in
        # the same order (each pair's angles sit in its slot); no further identities are claimed.
        if not cand.entangler.pairs_on(n) or (depth == 1 and not cand.hadamard):
            # no gate, or its only layer acts on |0..0> (no control is 1): the circuit has no entangler
            return _signature(replace(cand, entangler=Entangler("cnot", "none")), n, depth)
        ent = (cand.entangler.gate, tuple(cand.entangler.pairs_on(n)))
        return ("circuit", cand.hadamard, ent, tuple(enumerate(cand.rotation.axes)))
    perm, sign = layer_op(cand.entangler, n)
    layer = (perm.numpy().tobytes(), None if sign is None else sign.numpy().tobytes())
    axes = tuple(enumerate(cand.rotation.axes))  # (angle slot, axis): the slot says which angle it uses
    if depth == 1:  # one layer: an entangler that fixes the start does nothing, nor a final Rz
        if not cand.hadamard or sign is None:
            layer = None
        while axes and axes[-1][1] == "Z":
            axes = axes[:-1]
        while axes and not cand.hadamard and axes[0][1] == "Z":  # nor an Rz acting first on |0>
            axes = axes[1:]
    diagonal = layer is None or bool((perm == torch.arange(2**n)).all())
    if diagonal and not cand.hadamard and not {"X", "Y", "Z"} <= {a for _, a in axes}:
        # From |0..0> with a diagonal entangler (CZs only) X and Y rotations swap. Conjugating by
        # S = diag(1, i) on every wire maps Rx(t) -> Ry(-t), Ry(t) -> Rx(t), Rz -> Rz; by Z, every
        # Rx and Ry angle changes sign; complex conjugation flips the Rx and Rz angles. All three
        # commute with CZ, fix |0..0> and change no probability. Without Y (or without X) the
        # first two swap the axes exactly; without Z all three do. So Rx/Ry, RxRz/RyRz and
        # RxRy/RyRx are one group each; a layer with X, Y and Z is left alone.
        swapped = tuple((k, {"X": "Y", "Y": "X"}.get(a, a)) for k, a in axes)
        axes = min(axes, swapped)
    return ("circuit", cand.hadamard, layer, axes)


def output_groups(
    cands: Sequence[Candidate], n: int, depth: int | None = None, shared_angles: bool = True
) -> list[tuple[int, ...]]:
    """Candidate numbers grouped by identical output on n qubits (at `depth` layers; None: any
    depth >= 2), each group ascending, groups in the order of their lowest number.

    `shared_angles=False` (DiffQAS with `search.angles=per_candidate`): each candidate has angles
    of its own, so two angle-dependent candidates are identical only as functions, not in a run;
    only angle-independent candidates (whose output is a constant) are grouped then."""
    groups: dict[tuple, list[int]] = {}
    for cand in cands:
        signature = _signature(cand, n, depth)
        if not shared_angles and signature[0] == "circuit":
            signature = (*signature, cand.number)
        groups.setdefault(signature, []).append(cand.number)
    return sorted((tuple(sorted(g)) for g in groups.values()), key=lambda g: g[0])


def group_weight(weights: Sequence[float], group: Sequence[int]) -> float:
    """One structural weight per group: its members' mean (members are numbered from 1). In a run
    the members' weights are equal (identical outputs get identical gradients); the mean is the
    one number every report (ranking, selection, circuit.png, plots) uses for the group."""
    return sum(float(weights[i - 1]) for i in group) / len(group)


def angle_independent(cands: Sequence[Candidate], n: int, depth: int | None = None) -> list[int]:
    return sorted(c.number for c in cands if c.theta_independent(n, depth))
