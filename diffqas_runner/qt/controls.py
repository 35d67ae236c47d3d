"""Controls for the quantum part (`qt.source`): what feeds the mapping in place of the circuit.

A control is a source of the 2**n values the mapping reads, not a candidate: the generator
post-processes, maps and scales its output exactly as it does a circuit's probabilities, so the
only difference between a control run and a circuit run is where those values come from.

- `random`: one probability vector drawn once from a seeded generator and held fixed (never
  redrawn: a vector redrawn every step carries nothing a mapping can learn from). It is the
  control of the photonic Quantum-Train reproduction (ANCHORS.md): if it matches the circuit,
  the mapping, not the circuit, does the work.
- `classical`: a trainable classical generator of the 2**n values with the circuit's trained
  parameter count: a one-hidden-layer tanh network on a basis state's bits (+-1) gives one
  logit per basis state, and a softmax over all 2**n logits gives a distribution, as a circuit
  does. Its hidden width is chosen so the parameter count matches (docs/design.md says why this
  form and not a tensor train): (n + 2) parameters per hidden unit, plus one output bias; the
  last hidden unit may read only the first m bits, so the count lands within two parameters of
  the circuit's whenever that is at least n + 3.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SOURCES = ("circuit", "random", "classical")
# a control's own random streams, apart from the run's torch RNG (so the mapping starts as the
# circuit run's does with the same seed): seed * SEED_MIX + stream + offset
SEED_MIX = 1_000_003
RANDOM_OFFSET, CLASSICAL_OFFSET = 17, 29


def _stream(seed: int, stream: int, offset: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * SEED_MIX + stream * 7919 + offset) % 2**63)


def classical_shape(target: int, n: int) -> tuple[int, int]:
    """(full hidden units h, bits m read by a last partial unit, 0 for none) whose parameter count
    (n + 2) h + 1 + (m + 2 if m else 0) is nearest `target` (the circuit's trained parameters)."""
    if target <= 1:
        return 0, 0
    h, rest = divmod(target - 1, n + 2)
    if rest >= 3:  # a partial unit of m >= 1 bits costs m + 2 (its weights, bias, output weight)
        return h, rest - 2
    return h, 0


class RandomSource(nn.Module):
    """A fixed probability vector of length 2**n (uniform draws, normalised), seeded by the run's
    seed and the generator's stream; a buffer (checkpointed), never trained."""

    def __init__(self, n: int, seed: int, stream: int, dtype: torch.dtype):
        super().__init__()
        draw = torch.rand(2**n, generator=_stream(seed, stream, RANDOM_OFFSET), dtype=torch.float64)
        self.register_buffer("vector", (draw / draw.sum()).to(dtype))

    def forward(self) -> torch.Tensor:
        return self.vector

    def describe(self) -> dict:
        return {"kind": "random", "params": 0, "distribution": "uniform draws normalised to sum 1, fixed"}


class ClassicalSource(nn.Module):
    """softmax over i of f(bits(i)), f a tanh network n -> h (+ one unit on the first m bits) -> 1.

    Initialised as torch's Linear layers are (uniform in +-1/sqrt(fan_in)), from a seeded generator
    of its own, so its first distribution is uneven as a circuit's at random angles is."""

    def __init__(self, bits: torch.Tensor, target: int, seed: int, stream: int, dtype: torch.dtype):
        super().__init__()
        n = bits.shape[1]
        self.target = target
        self.h, self.m = classical_shape(target, n)
        self.register_buffer("bits", bits.to(dtype), persistent=False)
        gen = _stream(seed, stream, CLASSICAL_OFFSET)

        def uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            return nn.Parameter((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul(bound).to(dtype))

        width = self.h + (1 if self.m else 0)
        self.hidden_weight = uniform((self.h, n), n)
        self.partial_weight = uniform((1 if self.m else 0, self.m), self.m)
        self.hidden_bias = uniform((width,), n)
        self.out_weight = uniform((width,), width)
        self.out_bias = uniform((), width)

    def forward(self) -> torch.Tensor:
        pre = self.bits @ self.hidden_weight.T
        if self.m:
            pre = torch.cat([pre, self.bits[:, : self.m] @ self.partial_weight.T], 1)
        logits = torch.tanh(pre + self.hidden_bias) @ self.out_weight + self.out_bias
        return torch.softmax(logits, 0)

    def describe(self) -> dict:
        params = sum(p.numel() for p in self.parameters())
        return {
            "kind": "classical",
            "params": params,
            "matched_to": self.target,
            "network": f"tanh MLP on the +-1 bits: {self.bits.shape[1]}-{self.h}-1"
            + (f" plus one hidden unit on the first {self.m} bits" if self.m else "")
            + ", softmax over the 2^n logits",
        }


def all_bits(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Every basis state's bits as +-1, (2**n, n), qubit 0 the most significant."""
    index = torch.arange(2**n)
    return (((index[:, None] >> torch.arange(n - 1, -1, -1)) & 1) * 2 - 1).to(dtype)
