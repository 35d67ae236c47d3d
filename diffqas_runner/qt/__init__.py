"""Quantum-Train: a circuit's measurement probabilities mapped into a classical network's weights."""

from .generator import Generator, GeneratorSet, n_qubits_for

__all__ = ["Generator", "GeneratorSet", "n_qubits_for"]
