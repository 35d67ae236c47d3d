"""Which candidates give identical outputs, and which ignore their angles: from structure.

DiffQAS's structural weights of candidates with identical outputs receive identical gradients
and stay equal all run, so a ranking that orders them is only sort tie-breaking. This module
groups them, so rankings, plots and the selection stage treat each group as one circuit.

Structure alone decides (`Candidate.theta_independent`): an angle-independent candidate's
output is its start state carried through permutations, so it is uniform when the start is
|+..+> (H first) and |0..0> when the start is |0..0> (a CNOT never moves |0..0>). Two
angle-dependent candidates are grouped only when their structure is the same on n wires (the
same start, the same CNOT pairs in the same order, the same rotation). `confirm` checks the
grouping numerically.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .candidates import Candidate, cnot_pairs


def _signature(cand: Candidate, n: int) -> tuple:
    if cand.theta_independent:
        return ("uniform",) if cand.hadamard else ("basis-0",)
    return ("circuit", cand.hadamard, tuple(cnot_pairs(cand.entangler, n)), cand.rotation)


def output_groups(cands: Sequence[Candidate], n: int) -> list[tuple[int, ...]]:
    """Candidate numbers grouped by identical output on n qubits, each group ascending, groups in
    the order of their lowest number."""
    groups: dict[tuple, list[int]] = {}
    for cand in cands:
        groups.setdefault(_signature(cand, n), []).append(cand.number)
    return sorted((tuple(sorted(g)) for g in groups.values()), key=lambda g: g[0])


def angle_independent(cands: Sequence[Candidate]) -> list[int]:
    return sorted(c.number for c in cands if c.theta_independent)


def confirm(cands: Sequence[Candidate], n: int, depth: int, probabilities, seed: int = 0, atol: float = 1e-12) -> None:
    """Check the structural claims numerically at two random angle sets: members of a group give
    the same probabilities, angle-independent candidates the same at both, and different groups
    differ. `probabilities(theta, cands)` is a simulator. Raises AssertionError otherwise."""
    gen = torch.Generator().manual_seed(seed)
    thetas = [torch.rand(depth, n, generator=gen, dtype=torch.float64) * 4 * torch.pi for _ in range(2)]
    probs = [probabilities(t, list(cands)) for t in thetas]
    index = {c.number: i for i, c in enumerate(cands)}
    groups = output_groups(cands, n)
    for group in groups:
        for p in probs:
            for member in group[1:]:
                assert torch.allclose(p[index[member]], p[index[group[0]]], atol=atol), f"group {group} differs"
    for number in angle_independent(cands):
        assert torch.allclose(probs[0][index[number]], probs[1][index[number]], atol=atol), f"{number} depends on theta"
    for a in groups:
        for b in groups:
            if a[0] < b[0]:
                assert not torch.allclose(probs[0][index[a[0]]], probs[0][index[b[0]]], atol=atol), f"{a} and {b} agree"
