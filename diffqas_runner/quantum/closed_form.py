"""Closed form for the candidates that are IQP circuits: no initial H, a CNOT entangler, Rx layers.

Derivation (qubit 0 the most significant bit, x.z the GF(2) dot product of bit strings):
- A CNOT layer maps |x> to |A x> for an invertible GF(2) matrix A (it is a composition of
  x_t ^= x_c maps). In the Hadamard frame it is again a permutation:
  H^n P H^n |y> = |A^-T y>, because sum_x (-1)^(y.x) |A x> = sum_x' (-1)^((A^-T y).x') |x'>.
- Rx(t) = H Rz(t) H, so each layer R P = H^n Rz^n(theta_k) Ptilde H^n with Ptilde = (A^-T).
  The whole circuit on |0..0> is U|0> = H^n [prod_k Rz(theta_k) Ptilde] |+..+>.
- |+..+> = 2^(-n/2) sum_y |y> keeps all its magnitudes through Ptilde (a permutation) and Rz
  (a phase diag exp(-i/2 sum_q t_q (-1)^(z_q))). The amplitude that ends on z sat on
  (A^T)^(L-1-k) z in layer k, whose bit q is the parity r_kq . z with
  r_kq = column q of A^(L-1-k) = A^(L-1-k) e_q (the classical CNOT layer applied L-1-k times
  to the one-hot string of wire q). So the final H-frame amplitude is
  c(z) = 2^(-n/2) exp(-i Phi(z) / 2), Phi(z) = sum_{k,q} theta_kq (-1)^(r_kq . z) = WHT(a)(z),
  a = sum_{k,q} theta_kq e_{r_kq} (a scatter-add of the angles into 2**n slots).
- p(x) = |<x| H^n c>|^2 = |WHT(exp(-i Phi / 2))(x)|^2 / 4^n.
Two Walsh-Hadamard transforms and a scatter: the cost does not grow with the depth beyond
building the index table. Everything is torch ops, so autograd gives the backward.

Which candidates qualify is decided from the structure, not from their numbers: the rotation
layer is one Rx per wire, there is no initial H (the start |0..0> is the uniform superposition of
the X basis), the entangling layer has no sign (a sign pattern is not a permutation in the Hadamard frame)
and its basis permutation is linear over GF(2) (checked on every basis state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch

from . import kernel
from .candidates import RX, Candidate, Entangler, entangler_permutation, layer_op

# Bits per Walsh-Hadamard GEMM stage (4-5 measured fastest at n = 12..17, float32 and float64).
WHT_BLOCK = 5


@lru_cache(maxsize=64)
def linear_images(entangler: Entangler, n: int) -> torch.Tensor | None:
    """The images A e_q (as integers) of the one-hot strings under the classical CNOT layer, or
    None if the layer's basis map is not GF(2)-linear (then no closed form)."""
    perm = entangler_permutation(entangler, n)  # (layer psi)[i] = psi[perm[i]]: |perm[i]> -> |i>
    forward = torch.empty_like(perm)
    forward[perm] = torch.arange(2**n, dtype=perm.dtype)
    ones = 1 << torch.arange(n - 1, -1, -1)  # one-hot string of wire q: bit n-1-q
    images = forward[ones]
    x = torch.arange(2**n)
    rebuilt = torch.zeros_like(x)
    for q in range(n):
        rebuilt ^= ((x >> (n - 1 - q)) & 1) * images[q]
    return images if torch.equal(rebuilt, forward) else None


def applies(cand: Candidate, n: int) -> bool:
    """Whether the candidate's output is the IQP closed form above (see the module docstring)."""
    return (
        cand.rotation == RX
        and not cand.hadamard
        and not cand.entangler.parametrised
        and layer_op(cand.entangler, n)[1] is None
        and linear_images(cand.entangler, n) is not None
    )


@lru_cache(maxsize=64)
def parity_rows(entangler: Entangler, n: int, n_layers: int) -> torch.Tensor:
    """r[k, q] = A^(L-1-k) e_q as an integer bit string (qubit 0 most significant), shape (L, n)."""
    images = linear_images(entangler, n)
    if images is None:
        raise ValueError(f"{entangler} on {n} wires is not a GF(2)-linear basis map")
    x = torch.arange(2**n)
    forward = torch.zeros_like(x)
    for q in range(n):
        forward ^= ((x >> (n - 1 - q)) & 1) * images[q]
    rows = [1 << torch.arange(n - 1, -1, -1)]  # k = L-1: the one-hot strings
    for _ in range(n_layers - 1):
        rows.append(forward[rows[-1]])
    return torch.stack(rows[::-1])


def wht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform of the rows of x (R, 2**n): on the C++ kernel one
    autograd node of butterflies (kernel.WHT), else `wht_gemm`."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and kernel.load() is not None:
        return kernel.WHT.apply(x)
    return wht_gemm(x)


def wht_gemm(x: torch.Tensor) -> torch.Tensor:
    """`wht` in torch. H_n is a Kronecker product of small H_w blocks over any split of the bits, so
    it runs as a few GEMMs: each multiplies the lowest w bits by H_w and, by taking the transposed
    view as its operand, writes them back as the highest bits. After all stages every bit is back
    in place. One GEMM per stage and no copies: ~1 ms at n = 17 (against n torch butterflies).
    """
    rows, size = x.shape
    n = size.bit_length() - 1
    stages = max(1, math.ceil(n / WHT_BLOCK))
    for i in range(stages):
        w = n // stages + (1 if i < n % stages else 0)
        x = torch.matmul(_hadamard(w, x.dtype, str(x.device)), x.reshape(rows, -1, 2**w).mT)
    return x.reshape(rows, size)


@lru_cache(maxsize=32)
def _hadamard(w: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=dtype)
    base = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype)
    for _ in range(w):
        h = torch.kron(h, base)
    return h.to(device)


def probabilities(theta: torch.Tensor, cands: Sequence[Candidate]) -> torch.Tensor:
    """Probabilities (len(cands), 2**n) of candidates for which `applies` holds, in theta's dtype.

    The phases Phi are built in float64 whatever theta's dtype (they reach sum |theta|, where
    float32 would lose ~1e-4 rad) and reduced modulo 4 pi before the rest runs in theta's dtype.
    """
    n_layers, n = theta.shape
    index = torch.stack([parity_rows(c.entangler, n, n_layers) for c in cands]).to(theta.device)
    angles = theta.to(torch.float64).reshape(1, -1).expand(len(cands), -1)
    a = torch.zeros(len(cands), 2**n, dtype=torch.float64, device=theta.device)
    a = a.scatter_add(1, index.reshape(len(cands), -1), angles)
    half = torch.remainder(wht(a), 4 * math.pi).to(theta.dtype) / 2
    amplitudes = wht(torch.cat([torch.cos(half), torch.sin(half)]))  # (2C, 2**n): real, -imaginary
    return amplitudes.square().view(2, len(cands), 2**n).sum(0) / 4.0**n
