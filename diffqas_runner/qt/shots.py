"""Finite shots: the circuit's probabilities estimated from N measurement samples.

What a step does with `qt.shots=N`: every candidate circuit in use is "measured" N times, i.e.
its counts are one draw of Multinomial(N, P_j) over the 2**n basis states (numpy's multinomial,
O(2**n) whatever N), and the frequencies P^_j = counts / N replace P_j in the forward pass.
Candidates with identical outputs (quantum/groups.py) are one circuit: measured once, their
members share the frequencies, so their structural weights stay equal as with exact P. The
ensemble is then sum_j w_j P^_j: with raw structural weights it is not a distribution (entries
can be negative), so it cannot be sampled as one; on hardware each circuit is its own experiment.

Gradient (straight-through on the sampled frequencies): the backward pass treats P^_j as P_j,
  dL/dtheta = (dP_j/dtheta)^T  grad_P L |_(P^),
with the Jacobian-vector product computed exactly by the simulator (on hardware, parameter-shift
with shots estimates it without bias for a fixed upstream vector). E[P^_j] = P_j, so the weights'
inputs and any loss linear in P are estimated without bias; for the actual non-linear loss the
gradient estimate is consistent (its bias shrinks as 1/N) but not unbiased. The docs say so.

Seeding: each draw is seeded by (run seed, generator part, train/eval stream, step counter). The
counter is a buffer of the generator, so it is checkpointed and a resumed run draws the same
samples; an evaluation at step s draws the same sample as the model written at step s, so
model.pt reproduces the reported metrics.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN, EVAL = 0, 1


def frequencies(probs: torch.Tensor, shots: int, seed: tuple[int, ...]) -> torch.Tensor:
    """counts / shots for each row of probs (R, 2**n), one multinomial draw per row."""
    p = probs.detach().to("cpu", torch.float64).clamp_min(0)
    p = p / p.sum(1, keepdim=True)
    counts = np.random.default_rng(list(seed)).multinomial(shots, p.numpy())
    return torch.from_numpy(counts / shots).to(dtype=probs.dtype, device=probs.device)


def estimate(
    probs: torch.Tensor, shots: int, seed: tuple[int, ...], heads: torch.Tensor | None = None, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """The sampled frequencies in the forward pass, the exact probabilities' gradient in the backward.

    `heads`/`rows`: rows with identical probabilities (a group of identical candidates) are measured
    once: `heads` are the rows drawn, `rows[i]` the draw row i shows. Every row keeps the gradient
    of its own P."""
    if heads is None:
        freq = frequencies(probs, shots, seed)
    else:
        freq = frequencies(probs[heads], shots, seed)[rows]
    return freq + (probs - probs.detach())  # exactly the frequencies, exactly P's gradient
