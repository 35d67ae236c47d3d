"""The project's own state-vector simulator for any candidate circuit (quantum/candidates.py).

Each candidate takes the fastest path its structure allows (`_mode`; measured with
scripts/bench_backends.py):
- Candidates whose output cannot depend on theta (`Candidate.theta_independent`) are
  simulated once per (n, L, dtype, device) and cached, with no autograd graph.
- IQP candidates (one Rx per wire, no H, a sign-free CNOT layer: paper12's 7 and 10) use the
  closed form of `closed_form` (two Walsh-Hadamard transforms, whatever the depth).
- The others run in batches of rows sharing one path and rotation layer. Ry circuits are real
  (CZ signs included). An Rx layer is D R'^n D with D = diag((-i)^popcount(x)) and the real
  R'(t) = [[cos t/2, sin t/2], [sin t/2, -cos t/2]], so tracking phi = D^-1 psi turns each
  entangling layer P into the signed permutation D P D of the stacked (real, imaginary) rows and
  the rotation into a real matrix: half the flops of complex arithmetic. Any other rotation
  layer (RyRz, Rot, ...) runs on the same machinery with complex amplitudes: the generic path.
  On the C++ kernel, Ry between Z rotations (RyRz, RzRy, Rot) takes `kernel.YZLayers` instead.
- A rotation layer on n wires is 4 small Kronecker blocks applied as plain GEMMs: the state
  is kept in a layout where the two blocks it applies sit at the ends of the index (one GEMM
  from the left, one from the right), one transpose exposes the other two, and the layout
  changes are folded into the entangler's gather, which is one precomputed index per layer.
- On CPU, sign-free Ry rows' layers after the first run in a fused C++ kernel with an adjoint
  backward (`kernel`, built on first use; pure torch below is the fallback, forced with
  DIFFQAS_NATIVE_KERNEL=torch).
- Parametrised entanglers (CRx, CRy, CRz, CRot, CU3; their angles are `phi`) are not
  permutations: their rows run gate by gate on complex amplitudes ("controlled"), batched by
  (entangler, start, rotation layer). A controlled gate applies its 2x2 to the half of the state
  whose control bit is 1. On the C++ kernel a controlled layer is one call with an adjoint
  backward and the rotation layer the complex rows' path; on pure torch a controlled layer is one
  autograd node with the same adjoint backward, a CRz layer (diagonal) one phase per basis state,
  and the rotation layer Kronecker blocks. From |0..0> the first entangler acts on no state.
- The first layer acts on a product state (|0..0> or |+..+>) that the first entangler fixes
  (unless CZs act on |+..+>: then the dense start state goes through every layer), so its
  output is a Kronecker product of 2-vectors.
Basis order everywhere outside this module: qubit 0 is the most significant bit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from . import closed_form, kernel
from .candidates import Candidate, entangler_permutation, layer_op

# Wires per Kronecker block: 2**BLOCK-sized GEMMs balance flops against memory passes.
BLOCK = 4


class _SignedGather(torch.autograd.Function):
    """out = x[idx] * sign for a flat signed permutation; the backward is its inverse."""

    @staticmethod
    def forward(ctx, x, idx, inverse, sign):
        ctx.inverse, ctx.sign = inverse, sign
        out = x.gather(0, idx)
        return out if sign is None else out * sign

    @staticmethod
    def backward(ctx, grad):
        if ctx.sign is not None:
            grad = grad * ctx.sign
        return grad.gather(0, ctx.inverse), None, None, None


def _gather(x: torch.Tensor, plan: tuple) -> torch.Tensor:
    return _SignedGather.apply(x, *plan)


def _rotation(axis: str, angles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(..., 2, 2) complex matrices R_axis(angle) = exp(-i angle sigma_axis / 2)."""
    c, s = torch.cos(angles / 2).to(dtype), torch.sin(angles / 2).to(dtype)
    zero = torch.zeros_like(c)
    if axis == "X":
        rows = [torch.stack([c, -1j * s], -1), torch.stack([-1j * s, c], -1)]
    elif axis == "Y":
        rows = [torch.stack([c, -s], -1), torch.stack([s, c], -1)]
    else:
        rows = [torch.stack([c - 1j * s, zero], -1), torch.stack([zero, c + 1j * s], -1)]
    return torch.stack(rows, -2)


def _single_qubit(mode: str, angles: torch.Tensor, axes: tuple[str, ...] = ()) -> torch.Tensor:
    """(..., n, 2, 2) matrices of one rotation layer: real Ry(angle) ("ry"), real R'(angle) for Rx
    ("rx", see the module docstring), or the complex product R_ak ... R_a1 ("complex", angles
    (..., n, k) with the first axis applied first)."""
    if mode == "complex":
        cdtype = torch.complex128 if angles.dtype == torch.float64 else torch.complex64
        out = _rotation(axes[0], angles[..., 0], cdtype)
        for k in range(1, len(axes)):
            out = _rotation(axes[k], angles[..., k], cdtype) @ out
        return out
    c, s = torch.cos(angles / 2), torch.sin(angles / 2)
    if mode == "ry":
        rows = [torch.stack([c, -s], -1), torch.stack([s, c], -1)]
    else:
        rows = [torch.stack([c, s], -1), torch.stack([s, -c], -1)]
    return torch.stack(rows, -2)


def _kron(mats: torch.Tensor) -> torch.Tensor:
    """Kronecker product along dim 1, batched over dim 0: (B, k, a, b) -> (B, a**k, b**k)."""
    out = mats[:, 0]
    for q in range(1, mats.shape[1]):
        m = mats[:, q]
        out = (out[:, :, None, :, None] * m[:, None, :, None, :]).flatten(3, 4).flatten(1, 2)
    return out


@dataclass(frozen=True)
class _Plan:
    """Precomputed indices for one batch of rows: layouts, gathers and block boundaries."""

    rows: int
    blocks: tuple[tuple[int, int], ...]  # (start wire, width); 2 blocks, or 4 for n >= 2*BLOCK
    first_to_a: tuple  # gather: standard layout -> layout A, with the CNOT layer
    c_to_a: tuple  # gather: layout C (after a full layer) -> layout A, with the CNOT layer
    to_standard: tuple  # gather: final layout -> standard (rows, 2**n), no CNOT


def _layout_positions(rows: int, n: int, axes: list[int]) -> torch.Tensor:
    """pos[j] = standard flat index (row-major (rows, 2**n)) of layout position j."""
    return torch.arange(rows * 2**n).view(rows, *[2] * n).permute(axes).reshape(-1)


def _signed_source(cands: Sequence[Candidate], n: int, is_rx: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For every standard position (row, x): where its value comes from after one entangling layer,
    and its sign (None if all are +1).

    Ry and complex rows: (row, src(x)) times the layer's sign s(x) (CZ gates). Rx rows come in
    (real, imag) pairs and carry the phase (-i)^(popcount(x) + popcount(src(x))) of D P D, i.e. a
    swap of the pair and a sign, times s(x) (a real diagonal commutes with D).
    """
    dim = 2**n
    x = torch.arange(dim)
    ones = torch.ones(dim)
    sources, signs = [], []
    for cand in cands:
        src, layer_sign = layer_op(cand.entangler, n)
        layer_sign = ones if layer_sign is None else layer_sign.to(torch.float64)
        if not is_rx:
            sources.append(len(sources) * dim + src)
            signs.append(layer_sign)
            continue
        base = len(sources) * dim
        popcount = lambda v: sum(((v >> b) & 1) for b in range(n))  # noqa: E731
        m = (popcount(x) + popcount(src)) % 4  # phase (-i)^m
        # phase 1: (a, b); -i: (b, -a); -1: (-a, -b); i: (-b, a), with phi = a + i b.
        swap = (m % 2) == 1
        re_src = torch.where(swap, base + dim + src, base + src)
        im_src = torch.where(swap, base + src, base + dim + src)
        re_sign = torch.where((m == 2) | (m == 3), -1.0, 1.0) * layer_sign
        im_sign = torch.where((m == 1) | (m == 2), -1.0, 1.0) * layer_sign
        sources += [re_src, im_src]
        signs += [re_sign, im_sign]
    sign = torch.cat(signs)
    return torch.cat(sources), (None if bool((sign == 1).all()) else sign)


def _gather_plan(out_pos, in_pos, source, sign, dtype, device):
    inv_in = torch.argsort(in_pos)
    idx = inv_in[source[out_pos]] if source is not None else inv_in[out_pos]
    inverse = torch.argsort(idx)
    sgn = None if sign is None else sign[out_pos].to(dtype=dtype, device=device)
    return idx.to(device), inverse.to(device), sgn


@lru_cache(maxsize=32)
def _plan(cands: tuple[Candidate, ...], n: int, dtype: torch.dtype, device: str, mode: str) -> _Plan:
    is_rx = mode == "rx"
    rows = len(cands) * (2 if is_rx else 1)
    if n >= 2 * BLOCK:
        edges = [round(i * n / 4) for i in range(5)]
    else:
        edges = [0, n // 2, n]
    blocks = tuple((a, b - a) for a, b in zip(edges, edges[1:]))
    bits = [[1 + q for q in range(a, a + w)] for a, w in blocks]
    layout_a = bits[0] + [0] + [ax for blk in bits[1:] for ax in blk]
    if len(blocks) == 4:  # the transpose of A (as a 2-D matrix split after B2) is C
        layout_c = bits[2] + bits[3] + bits[0] + [0] + bits[1]
    else:
        layout_c = layout_a
    std = torch.arange(rows * 2**n)
    pos_a = _layout_positions(rows, n, layout_a)
    pos_c = _layout_positions(rows, n, layout_c)
    source, sign = _signed_source(cands, n, is_rx)
    return _Plan(
        rows=rows,
        blocks=blocks,
        first_to_a=_gather_plan(pos_a, std, source, sign, dtype, device),
        c_to_a=_gather_plan(pos_a, pos_c, source, sign, dtype, device),
        to_standard=_gather_plan(std, pos_c, None, None, dtype, device),
    )


def _rotate(flat: torch.Tensor, u: list[torch.Tensor], plan: _Plan) -> torch.Tensor:
    """Apply one rotation layer (its Kronecker blocks u) to a flat state in layout A; returns layout C."""
    blocks = plan.blocks
    state = u[0] @ flat.view(u[0].shape[0], -1)
    state = state.view(-1, u[-1].shape[0]) @ u[-1].T
    if len(blocks) == 2:
        return state.reshape(-1)
    right = 2 ** (blocks[2][1] + blocks[3][1])
    state = state.view(-1, right).T.contiguous()  # layout C: [B3 B4 B1 rows B2]
    state = u[2] @ state.view(u[2].shape[0], -1)
    state = state.view(-1, u[1].shape[0]) @ u[1].T
    return state.reshape(-1)


def _first_layer(cands: Sequence[Candidate], mats: torch.Tensor, is_rx: bool) -> torch.Tensor:
    """State after layer 0 in the standard layout: a Kronecker product of 2-vectors per row.

    The first entangler P fixes the start psi0 (`_start_fixed`). Rx rows track phi = D^-1 psi, so
    layer 0 gives R' (D P D) D^-1 psi0 = R' D psi0: on |0..0> that is R' |0..0>, on |+..+> it is
    R' applied to (1, -i) / sqrt 2 on every wire, a complex product state split into
    (real, imaginary) rows."""
    r = 2**-0.5
    if is_rx:
        cdtype = torch.complex128 if mats.dtype == torch.float64 else torch.complex64
        plus, zero = torch.tensor([r, -1j * r], dtype=cdtype), torch.tensor([1.0, 0.0], dtype=cdtype)
    else:
        plus, zero = torch.tensor([r, r], dtype=mats.dtype), torch.tensor([1.0, 0.0], dtype=mats.dtype)
    starts = torch.stack([plus if c.hadamard else zero for c in cands]).to(mats.device)  # (k, 2)
    vecs = torch.einsum("qab,kb->kqa", mats.to(starts.dtype), starts)[..., None]  # (k, n, 2, 1): rotated 1-qubit states
    state = _kron(vecs).squeeze(-1)  # (k, 2**n)
    if is_rx:  # (real, imaginary) row pairs
        state = torch.stack([state.real, state.imag], 1)
    return state.reshape(-1)


@lru_cache(maxsize=32)
def _permutations(cands: tuple[Candidate, ...], n: int) -> torch.Tensor:
    """(rows, 2**n) int32: each row's CNOT layer as a gather index, for the C++ kernel."""
    return torch.stack([entangler_permutation(c.entangler, n) for c in cands]).to(torch.int32)


@lru_cache(maxsize=32)
def _signs(cands: tuple[Candidate, ...], n: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(rows, 2**n) signs of each row's entangling layer (CZ gates), or None when all are +1."""
    signs = [layer_op(c.entangler, n)[1] for c in cands]
    if all(s is None for s in signs):
        return None
    return torch.stack([torch.ones(2**n) if s is None else s for s in signs]).to(dtype)


def _kernel_group(theta: torch.Tensor, cands: tuple[Candidate, ...], mode: str) -> torch.Tensor:
    """`_simulate_group` on the C++ kernel: real rows for Ry, complex split planes for the rest.

    The kernel runs every layer from the start state, the first entangler included. (Until 0.2 a
    fixed start's layer 0 was built as a product of rotated 1-qubit states in torch, as the
    pure-torch path does: one kernel layer less, but some forty small autograd operations, which
    cost 2-3x the kernel itself at 11 qubits.)"""
    n = theta.shape[1]
    rows, dim = len(cands), 2**n
    perm, sign = _permutations(cands, n), _signs(cands, n, theta.dtype)
    if mode == "ry":
        return kernel.RyLayers.apply(_starts(cands, n, theta.dtype), theta, perm, sign).square()
    if mode == "rx":  # (real, imaginary) row pairs on the real kernel: see _rx_pairs
        perm2, sign2 = _rx_pairs(cands, n, theta.dtype)
        state = kernel.RyLayers.apply(_rx_start(cands, n, theta.dtype).view(2 * rows, dim), theta, perm2, sign2, 2)
        return state.square().view(rows, 2, dim).sum(1)
    axes = cands[0].rotation.axes
    if axes in YZ_AXES:
        return _kernel_yz(theta, cands, perm, sign)
    mats = _single_qubit("complex", theta if theta.dim() == 3 else theta[..., None], axes)  # (L, n, 2, 2)
    return kernel.ComplexLayers.apply(_split_start(cands, n, theta.dtype), mats, perm, sign).square().sum(1)


@lru_cache(maxsize=8)  # start states of the chunks a run simulates each step
def _starts(cands: tuple[Candidate, ...], n: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 2**n) each row's start state, real (made once; the kernel never writes its input)."""
    return torch.stack([_start_vector(c, n, dtype) for c in cands])


@lru_cache(maxsize=8)  # start states of the chunks a run simulates each step
def _split_start(cands: tuple[Candidate, ...], n: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 2, 2**n) split planes (real, imaginary) of the start states, for the complex kernels."""
    real = _starts(cands, n, dtype)
    return torch.stack([real, torch.zeros_like(real)], 1)


YZ_AXES = (("Y", "Z"), ("Z", "Y"), ("Z", "Y", "Z"))  # rotations the kernel runs as Ry between Z phases


def _kernel_yz(theta: torch.Tensor, cands: tuple[Candidate, ...], perm, sign) -> torch.Tensor:
    """Complex rows whose rotation is Ry between Z rotations (RyRz, RzRy, Rot) on kernel.YZLayers:
    the Ry of a layer as real rotations of both planes, its Z rotations as one diagonal phase per
    amplitude (kernel.cpp), at about twice a Ry row's cost instead of the general 2x2 path's 2-4x."""
    axes = cands[0].rotation.axes
    pre = theta[..., 0] if axes[0] == "Z" else None
    post = theta[..., -1] if axes[-1] == "Z" else None
    state = _split_start(cands, theta.shape[1], theta.dtype)
    return kernel.YZLayers.apply(state, theta[..., axes.index("Y")], pre, post, perm, sign).square().sum(1)


@lru_cache(maxsize=32)
def _rx_pairs(cands: tuple[Candidate, ...], n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Rx rows on the real Ry kernel: each candidate is a (real, imaginary) row pair of
    phi = D^-1 psi (`_signed_source`), whose layer is R' = Ry Z on every wire after the signed
    permutation D P D. The Z layer is a sign (-1)^popcount(x), folded into the permutation's, and
    the pair's gather indexes both its rows (kernel group 2). Returns (perm, sign), (2 rows, 2**n)."""
    dim = 2**n
    source, sign = _signed_source(cands, n, True)
    base = (torch.arange(2 * len(cands)) // 2 * 2 * dim)[:, None]
    perm = (source.view(-1, dim) - base).to(torch.int32)
    x = torch.arange(dim)
    parity = 1.0 - 2.0 * (sum((x >> b) & 1 for b in range(n)) % 2).to(torch.float64)
    sign = (torch.ones(2 * len(cands), dim, dtype=torch.float64) if sign is None else sign.view(-1, dim)) * parity
    return perm.contiguous(), sign.to(dtype).contiguous()


@lru_cache(maxsize=8)  # start states of the chunks a run simulates each step
def _rx_start(cands: tuple[Candidate, ...], n: int, dtype: torch.dtype) -> torch.Tensor:
    """The start state of Rx rows in the tracked frame phi = D^-1 psi: phi[x] = i^popcount(x) psi[x],
    as (len(cands), 2, 2**n) (real, imaginary) rows (made once; callers never write it)."""
    dim = 2**n
    start = torch.stack([_start_vector(c, n, torch.float64) for c in cands])
    x = torch.arange(dim)
    turns = sum(((x >> b) & 1) for b in range(n)) % 4
    re = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)[turns]
    im = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)[turns]
    return torch.stack([start * re, start * im], 1).to(dtype)


def _start_vector(cand: Candidate, n: int, dtype: torch.dtype) -> torch.Tensor:
    """|+..+> with H, else |0..0>, as a real (2**n,) vector."""
    if cand.hadamard:
        return torch.full((2**n,), 2 ** (-n / 2), dtype=dtype)
    return torch.eye(1, 2**n, dtype=dtype)[0]


def _start_fixed(cand: Candidate, n: int) -> bool:
    """Whether the first entangler leaves the start state alone: CNOTs and CZs fix |0..0>, CNOTs
    fix |+..+>, CZs do not (they flip the signs of some of its terms)."""
    if cand.entangler.parametrised:  # they fix |0..0> (no control is 1), not |+..+> in general
        return not cand.hadamard
    return not cand.hadamard or layer_op(cand.entangler, n)[1] is None


def _mode(cand: Candidate, n: int, depth: int | None = None) -> str:
    """Which path simulates the candidate, from its structure (see the module docstring)."""
    if cand.theta_independent(n, depth):
        return "static"
    if cand.entangler.parametrised:
        return "controlled"
    if closed_form.applies(cand, n):
        return "closed_form"
    return _layer_mode(cand)


def _layer_mode(cand: Candidate) -> str:
    """The layer-by-layer path: real for Ry, real (re, im) pairs for Rx, complex for the rest."""
    return {("Y",): "ry", ("X",): "rx"}.get(cand.rotation.axes, "complex")


def _simulate_group(theta: torch.Tensor, cands: tuple[Candidate, ...], mode: str | None = None) -> torch.Tensor:
    """Probabilities (len(cands), 2**n) of candidates sharing one path and one rotation layer:
    "ry" (real), "rx" (real (re, im) row pairs) or "complex" (any rotations, complex amplitudes).
    theta: (L, n) for one-angle rotations, (L, n, k) for k angles per wire."""
    n_layers, n = theta.shape[:2]
    mode = mode or _layer_mode(cands[0])
    axes = cands[0].rotation.axes
    if any(c.rotation.axes != axes for c in cands) or mode not in ("ry", "rx", "complex"):
        raise ValueError(f"one rotation layer per group and mode ry, rx or complex; got {mode!r} for {[c.name for c in cands]}")
    if mode != "complex" and axes != {"ry": ("Y",), "rx": ("X",)}[mode]:
        raise ValueError(f"mode {mode!r} simulates {mode[1:].upper()} rotations only, not {cands[0].rotation.label}")
    if theta.dim() == 2:  # one angle per wire
        if len(axes) != 1:
            raise ValueError(f"{cands[0].rotation.label} needs {len(axes)} angles per wire; theta must be (L, n, {len(axes)})")
        if mode == "complex":
            theta = theta[..., None]
    elif mode != "complex" or theta.shape[2] != len(axes):
        raise ValueError(f"theta {tuple(theta.shape)} does not fit mode {mode!r} with {cands[0].rotation.label}")
    if theta.device.type == "cpu" and kernel.load() is not None:
        return _kernel_group(theta, cands, mode)
    is_rx = mode == "rx"
    mats = _single_qubit(mode, theta, axes)  # (L, n, 2, 2)
    if all(_start_fixed(c, n) for c in cands):
        flat = _first_layer(cands, mats[0], is_rx)
        first = 1
    else:  # a CZ entangler on |+..+>: start from the start state and run every layer
        if is_rx:  # the tracked phi = D^-1 psi as (real, imaginary) rows
            start = _rx_start(cands, n, torch.float64)
        else:
            start = torch.stack([_start_vector(c, n, torch.float64) for c in cands])
        flat = start.to(dtype=mats.dtype, device=theta.device).reshape(-1)
        first = 0
    plan = _plan(cands, n, theta.dtype, str(theta.device), mode)
    blocks = [_kron(mats[first:, a : a + w]) for a, w in plan.blocks]  # each (L - first, 2**w, 2**w)
    final_plan = None  # the state is still in the standard layout
    for layer in range(first, n_layers):
        flat = _gather(flat, plan.first_to_a if final_plan is None else plan.c_to_a)
        flat = _rotate(flat, [u[layer - first] for u in blocks], plan)
        final_plan = plan.to_standard
    probs = torch.view_as_real(flat).square().sum(-1) if flat.is_complex() else flat.square()
    if final_plan is not None:
        probs = _gather(probs, final_plan)
    probs = probs.view(plan.rows, 2**n)
    if is_rx:
        probs = probs.view(len(cands), 2, 2**n).sum(1)
    return probs


def _angles(theta: torch.Tensor, cand: Candidate) -> torch.Tensor:
    """The candidate's angles from the shared tensor: (L, n) for one rotation per wire, else
    (L, n, k) with its first k of the tensor's angles per wire."""
    k = cand.rotation.n_angles
    if theta.dim() == 2:
        if k != 1:
            raise ValueError(f"candidate {cand.number} ({cand.name}) needs {k} angles per wire; theta must be (L, n, >= {k})")
        return theta
    if theta.shape[2] < k:
        raise ValueError(f"candidate {cand.number} ({cand.name}) needs {k} angles per wire; theta has {theta.shape[2]}")
    return theta[..., 0] if k == 1 else theta[..., :k]


def _simulate_any(theta: torch.Tensor, cand: Candidate) -> torch.Tensor:
    """Reference simulation of one candidate with complex amplitudes, gate by gate (any structure)."""
    angles = _angles(theta, cand)
    angles = angles[..., None] if angles.dim() == 2 else angles
    n_layers, n = angles.shape[:2]
    complex_dtype = torch.complex128 if theta.dtype == torch.float64 else torch.complex64
    state = torch.zeros(2**n, dtype=complex_dtype, device=theta.device)
    if cand.hadamard:
        state[:] = 2 ** (-n / 2)
    else:
        state[0] = 1
    perm, sign = layer_op(cand.entangler, n)
    perm = perm.to(theta.device)
    paulis = {
        "X": torch.tensor([[0, 1], [1, 0]], dtype=complex_dtype),
        "Y": torch.tensor([[0, -1j], [1j, 0]], dtype=complex_dtype),
        "Z": torch.tensor([[1, 0], [0, -1]], dtype=complex_dtype),
    }
    eye = torch.eye(2, dtype=complex_dtype, device=theta.device)
    for layer in range(n_layers):
        state = state[perm]
        if sign is not None:
            state = state * sign.to(device=theta.device, dtype=complex_dtype)
        for q in range(n):
            for k, axis in enumerate(cand.rotation.axes):
                t = angles[layer, q, k].to(complex_dtype)
                gate = torch.cos(t / 2) * eye - 1j * torch.sin(t / 2) * paulis[axis].to(theta.device)
                state = torch.einsum("ij,ajb->aib", gate, state.view(2**q, 2, -1)).reshape(-1)
    return torch.view_as_real(state).square().sum(-1)


@lru_cache(maxsize=256)
def _static_probabilities(cand: Candidate, n: int, n_layers: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The probabilities of an angle-independent candidate (`Candidate.theta_independent`): its
    output at theta = 0 (and phi = 0)."""
    with torch.no_grad():
        if cand.entangler.parametrised:
            zeros = torch.zeros(n_layers, n, cand.rotation.n_angles, dtype=dtype, device=device)
            phi = torch.zeros(
                n_layers, max(1, len(cand.entangler.pairs_on(n))), cand.entangler.n_angles, dtype=dtype, device=device
            )
            return _simulate_controlled(zeros, phi, (cand,))[0]
        # at theta = 0 every rotation is the identity: the start state through the entangling layers
        # alone (what `_simulate_any` gives at zero angles, without its n * L gates on 2**n amplitudes)
        perm, sign = layer_op(cand.entangler, n)
        state = _start_vector(cand, n, dtype).to(device)
        for _ in range(n_layers):
            state = state[perm.to(device)] if sign is None else state[perm.to(device)] * sign.to(device, dtype)
        return state.square()


# --- parametrised entanglers: gate by gate ----------------------------------------------------
def controlled_matrices(gate: str, angles: torch.Tensor) -> torch.Tensor:
    """(..., 2, 2) complex matrices a controlled gate applies to its target when the control is 1;
    angles (..., m). CRx/CRy/CRz: R_a(t); CRot(a, b, c): Rz(c) Ry(b) Rz(a) (PennyLane's CRot);
    CU3(t, p, l): [[cos t/2, -e^(il) sin t/2], [e^(ip) sin t/2, e^(i(p+l)) cos t/2]] (U3 with its
    phase, which a control makes relative: CU3 is not a controlled Rot)."""
    cdtype = torch.complex128 if angles.dtype == torch.float64 else torch.complex64
    if gate in ("crx", "cry", "crz"):
        return _rotation(gate[-1].upper(), angles[..., 0], cdtype)
    if gate == "crot":
        return _single_qubit("complex", angles, ("Z", "Y", "Z"))
    if gate != "cu3":
        raise ValueError(f"{gate!r} is not a parametrised controlled gate")
    t, p, lam = angles.unbind(-1)
    c, s = torch.cos(t / 2).to(cdtype), torch.sin(t / 2).to(cdtype)
    ep, el = torch.exp(1j * p.to(cdtype)), torch.exp(1j * lam.to(cdtype))
    return torch.stack([torch.stack([c, -el * s], -1), torch.stack([ep * s, ep * el * c], -1)], -2)


def _control_half(state: torch.Tensor, control: int, target: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (a, b) of the amplitudes of (R, 2**n) states whose `control` bit is 1, with the
    `target` bit 0 and 1."""
    lo, hi = sorted((control, target))
    v = state.view(state.shape[0], 2**lo, 2, 2 ** (hi - lo - 1), 2, 2 ** (n - 1 - hi))
    on = v.select(2 if control < target else 4, 1)
    t_at = 2 if control > target else 3  # the target's axis in `on`
    return on.select(t_at, 0), on.select(t_at, 1)


def _mix_(state: torch.Tensor, u: torch.Tensor, control: int, target: int, n: int) -> None:
    """In place, no autograd: the 2x2 u on `target` where `control` is 1."""
    a, b = _control_half(state, control, target, n)
    new_a = u[0, 0] * a + u[0, 1] * b
    b.mul_(u[1, 1]).add_(u[1, 0] * a)
    a.copy_(new_a)


class _ControlledLayer(torch.autograd.Function):
    """One layer of controlled 2x2 gates (the same for every row), applied in order to (R, 2**n)
    complex states, with an adjoint backward: the forward keeps only its output; the backward
    walks the gates in reverse, un-applying each (its inverse is its adjoint) to recover the
    gate's input, so the graph holds one node per layer instead of a dozen per gate.
    For y = U x on the control-1 half: dL/dx = U^H dL/dy and dL/dU = sum over it of dL/dy x^H."""

    @staticmethod
    def forward(ctx, state, gates, pairs, n):
        out = state.clone()
        for j, (c, t) in enumerate(pairs):
            _mix_(out, gates[j], c, t, n)
        ctx.save_for_backward(out, gates)
        ctx.pairs, ctx.n = pairs, n
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        out, gates = ctx.saved_tensors
        pairs, n = ctx.pairs, ctx.n
        psi, lam = out.clone(), grad.clone()
        grad_gates = torch.zeros_like(gates)
        adjoints = gates.conj().transpose(-1, -2)
        for j in range(len(pairs) - 1, -1, -1):
            c, t = pairs[j]
            _mix_(psi, adjoints[j], c, t, n)  # the gate's input
            la, lb = _control_half(lam, c, t, n)
            pa, pb = _control_half(psi, c, t, n)
            lams, psis = torch.stack([la, lb]).reshape(2, -1), torch.stack([pa, pb]).reshape(2, -1)
            grad_gates[j] = torch.linalg.vecdot(psis[None], lams[:, None])  # sum(lam_i conj(psi_k))
            _mix_(lam, adjoints[j], c, t, n)
        return lam, grad_gates, None, None


@lru_cache(maxsize=64)
def _crz_signs(pairs: tuple[tuple[int, int], ...], n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """(2**n, pairs): bit_c (bit_t - 1/2) per basis state and pair: a CRz layer's phase is this times its angles."""
    x = torch.arange(2**n)
    cols = [((x >> (n - 1 - c)) & 1) * (((x >> (n - 1 - t)) & 1) - 0.5) for c, t in pairs]
    return torch.stack(cols, 1).to(dtype=dtype, device=device)


def _simulate_controlled(theta: torch.Tensor, phi: torch.Tensor, cands: tuple[Candidate, ...]) -> torch.Tensor:
    """Probabilities (len(cands), 2**n) of candidates with one parametrised entangler (the same
    gate on the same pairs), one start and one rotation layer, batched as rows: theta (L, n) or
    (L, n, k) the shared rotation angles (each candidate its first ones), phi (L, >= pairs, >= m)
    the entangler's (pair j of layer l uses phi[l, j, :m]). On the C++ kernel (where it is
    loaded) each layer is two calls with adjoint backwards; on pure torch a controlled layer is
    one autograd node (`_ControlledLayer`), a CRz layer one phase, a rotation layer Kronecker blocks."""
    head = cands[0]
    n_layers, n = theta.shape[:2]
    pairs = head.entangler.pairs_on(n)
    key = (head.entangler.gate, pairs, head.hadamard, head.rotation)
    if any((c.entangler.gate, c.entangler.pairs_on(n), c.hadamard, c.rotation) != key for c in cands):
        raise ValueError(f"one entangler, start and rotation layer per batch; got {[c.name for c in cands]}")
    theta = theta[..., None] if theta.dim() == 2 else theta
    gate, m = head.entangler.gate, head.entangler.n_angles
    mats = _single_qubit("complex", theta[..., : head.rotation.n_angles], head.rotation.axes)  # (L, n, 2, 2)
    rows, cdtype = len(cands), mats.dtype
    skip_first = not head.hadamard  # from |0..0> no control is 1 in layer 0: its entangler does nothing
    if pairs:
        gates = controlled_matrices(gate, phi[:, : len(pairs), :m])  # (L, pairs, 2, 2), the same for every row
    if theta.device.type == "cpu" and kernel.load() is not None:
        # split planes (rows, 2, 2**n) on the C++ kernel: each controlled layer in one call, each
        # rotation layer as the complex rows' path with an identity permutation
        start = _start_vector(head, n, theta.dtype).to(theta.device)
        state = torch.stack([start, torch.zeros_like(start)]).expand(rows, 2, -1).contiguous()
        identity, pair_index = _kernel_indices(rows, n, tuple(pairs))
        for layer in range(n_layers):
            if pairs and (layer > 0 or not skip_first):
                state = kernel.ControlledLayer.apply(state, gates[layer], pair_index)
            state = kernel.ComplexLayers.apply(state, mats[layer : layer + 1], identity, None)
        return state.square().sum(1)
    state = _start_vector(head, n, theta.dtype).to(device=theta.device, dtype=cdtype).expand(rows, -1)
    width = BLOCK if n >= 2 * BLOCK else max(1, n // 2)
    blocks = [(a, min(width, n - a)) for a in range(0, n, width)]
    kron = [_kron(mats[:, a : a + w]) for a, w in blocks]  # each (L, 2**w, 2**w)
    if gate == "crz" and pairs:
        signs = _crz_signs(tuple(pairs), n, theta.dtype, str(theta.device))
    for layer in range(n_layers):
        if pairs and (layer > 0 or not skip_first):
            if gate == "crz":  # diagonal: one phase per basis state
                state = state * torch.exp(1j * (signs @ phi[layer, : len(pairs), 0])).to(cdtype)
            else:
                state = _ControlledLayer.apply(state.contiguous(), gates[layer], tuple(pairs), n)
        for (a, w), u in zip(blocks, kron):
            state = _apply_on(state, u[layer], a, w)
    return torch.view_as_real(state).square().sum(-1)


@lru_cache(maxsize=32)
def _kernel_indices(rows: int, n: int, pairs: tuple[tuple[int, int], ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's inputs for controlled rows, made once: an identity permutation (rows, 2**n)
    (the rotation layer alone) and the (control, target) pairs as (pairs, 2) int32."""
    identity = torch.arange(2**n, dtype=torch.int32).expand(rows, -1).contiguous()
    return identity, torch.tensor(pairs, dtype=torch.int32).reshape(-1, 2)


def _apply_on(state: torch.Tensor, u: torch.Tensor, first: int, width: int) -> torch.Tensor:
    """A (2**width)-square matrix on wires first..first+width-1 of (R, 2**n) states."""
    view = state.reshape(state.shape[0], 2**first, 2**width, -1)
    return torch.einsum("ij,rajb->raib", u, view).reshape(state.shape)


def _controlled_rows(theta: torch.Tensor, phi: torch.Tensor, cands: tuple[Candidate, ...], memory_mb: int | None) -> torch.Tensor:
    """`_simulate_controlled` in batches of one entangler and start; when the batches' autograd
    graphs would not fit the budget (`row_bytes`), each row is simulated alone and checkpointed
    (its activations recomputed in the backward)."""
    budget = (default_memory_mb() if memory_mb is None else memory_mb) * 2**20
    n_layers, n = theta.shape[:2]
    per_row = row_bytes("controlled", n, n_layers, theta.dtype, False, max(len(c.entangler.pairs_on(n)) for c in cands))
    batches: dict[tuple, list[int]] = {}
    for i, c in enumerate(cands):
        batches.setdefault((c.entangler, c.hadamard, c.rotation), []).append(i)
    rows: dict[int, torch.Tensor] = {}
    fits = not (theta.requires_grad or phi.requires_grad) or per_row * len(cands) <= budget
    for members in batches.values():
        if fits:
            probs = _simulate_controlled(theta, phi, tuple(cands[i] for i in members))
        else:
            from torch.utils.checkpoint import checkpoint

            probs = torch.cat([checkpoint(_simulate_controlled, theta, phi, (cands[i],), use_reentrant=False) for i in members])
        rows.update(zip(members, probs.unbind(0)))
    return torch.stack([rows[i] for i in range(len(cands))])


def available_mb() -> int:
    """The memory this machine has free now (MemAvailable, else all of it), in MB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


@lru_cache(maxsize=1)
def default_memory_mb() -> int:
    """backend.memory_mb=null: half the memory available when this process first simulates
    (decided once, so a run's chunking, and so its arithmetic, never changes halfway)."""
    return max(1, available_mb() // 2)


def row_bytes(mode: str, n: int, n_layers: int, dtype: torch.dtype, on_kernel: bool, pairs: int = 0) -> int:
    """Estimated peak bytes one row of a `_simulate_group` step holds, forward and backward. The
    kernel keeps about 8 copies of the state (its adjoint backward stores no layers); pure torch
    keeps about 7 per layer for autograd (measured: 100-120 MB per Ry row at 17 qubits, 15
    layers). Planes: 1 for Ry rows, 2 for Rx (re, im) and complex. Complex rows on the kernel keep
    one more (the Z-phase kernel's float64 sums by source index). "controlled" rows (gate by gate)
    keep about 2 copies per gate and block of every layer."""
    planes = 1 if mode == "ry" else 2
    if mode == "controlled":
        copies = 2 * (pairs + 5) * n_layers + 4
    else:
        copies = (9 if mode == "complex" else 8) if on_kernel else 7 * (n_layers + 2)
    return planes * (2**n) * torch.finfo(dtype).bits // 8 * copies


def _chunked_group(theta: torch.Tensor, cands: tuple[Candidate, ...], mode: str, memory_mb: int | None) -> torch.Tensor:
    """`_simulate_group` in chunks of rows that fit `memory_mb` (None: `default_memory_mb()`). Rows
    do not interact, so chunking changes values only by rounding (batched products of the first
    layer round differently for another batch size: ~1e-17 here). Every chunk is
    checkpointed (torch.utils.checkpoint): its activations are dropped after the forward
    and recomputed in the backward, one chunk at a time; on the kernel too (its graph keeps the
    final state and the first layer of every row)."""
    budget = (default_memory_mb() if memory_mb is None else memory_mb) * 2**20
    on_kernel = theta.device.type == "cpu" and kernel.load() is not None
    per_row = row_bytes(mode, theta.shape[1], theta.shape[0], theta.dtype, on_kernel)
    size = max(1, budget // per_row)
    if size >= len(cands):
        return _simulate_group(theta, cands, mode)
    parts = []
    for start in range(0, len(cands), size):
        chunk = cands[start : start + size]
        if not theta.requires_grad:
            parts.append(_simulate_group(theta, chunk, mode))
        else:  # the kernel's graph also keeps a state and the first layer per row: checkpoint it too
            from torch.utils.checkpoint import checkpoint

            parts.append(checkpoint(_simulate_group, theta, chunk, mode, use_reentrant=False))
    return torch.cat(parts)


def check_phi(phi: torch.Tensor | None, cands: Sequence[Candidate], n_layers: int, n: int) -> None:
    """phi must hold (L, pairs, angles per pair) for every candidate with a parametrised entangler."""
    need = [(len(c.entangler.pairs_on(n)), c.entangler.n_angles, c) for c in cands if c.entangler.parametrised]
    if not need:
        return
    pairs, m = max(p for p, _, _ in need), max(k for _, k, _ in need)
    if phi is None or phi.dim() != 3 or phi.shape[0] != n_layers or phi.shape[1] < pairs or phi.shape[2] < m:
        shape = None if phi is None else tuple(phi.shape)
        raise ValueError(
            f"phi must have shape ({n_layers}, >= {pairs}, >= {m}) for {need[0][2].name}'s entangler angles, got {shape}"
        )


def simulated_blocks(
    theta: torch.Tensor, cands: Sequence[Candidate], memory_mb: int | None = None, phi: torch.Tensor | None = None
) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """The candidates' probabilities as blocks, each (positions in `cands`, (len(positions), 2**n)):
    one block per path and rotation layer, as each is simulated, and one block of every
    angle-independent candidate (constants, made once per process). `probabilities` and `mixture`
    are built on it; the arguments are theirs."""
    if theta.dim() not in (2, 3) or theta.shape[1] < 2 or theta.shape[0] < 1:
        raise ValueError(f"theta must have shape (L, n) or (L, n, k) with L >= 1 and n >= 2, got {tuple(theta.shape)}")
    if theta.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"theta dtype must be float32 or float64, got {theta.dtype}")
    n_layers, n = theta.shape[:2]
    check_phi(phi, cands, n_layers, n)
    static: list[int] = []
    groups: dict[tuple, list[int]] = {}
    controlled: list[int] = []
    for i, cand in enumerate(cands):
        _angles(theta, cand)  # checks the angle count for every candidate
        mode = _mode(cand, n, n_layers)
        if mode == "static":
            static.append(i)
        elif mode == "controlled":
            controlled.append(i)
        else:  # signed (CZ) Ry rows apart: the sign-free ones need no sign array
            signed = mode == "ry" and layer_op(cand.entangler, n)[1] is not None
            groups.setdefault((mode, cand.rotation, signed), []).append(i)
    blocks = []
    if static:
        block = _static_block(tuple(cands[i] for i in static), n, n_layers, theta.dtype, str(theta.device))
        blocks.append((tuple(static), block))
    for (mode, _, _), members in groups.items():
        members_c = tuple(cands[i] for i in members)
        angles = _angles(theta, members_c[0])
        if mode == "closed_form":
            probs = closed_form.probabilities(angles, members_c)
        else:
            probs = _chunked_group(angles, members_c, mode, memory_mb)
        blocks.append((tuple(members), probs))
    if controlled:
        probs = _controlled_rows(theta, phi.to(theta.dtype), tuple(cands[i] for i in controlled), memory_mb)
        blocks.append((tuple(controlled), probs))
    return blocks


@lru_cache(maxsize=64)
def _static_block(cands: tuple[Candidate, ...], n: int, n_layers: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.stack([_static_probabilities(c, n, n_layers, dtype, device) for c in cands])


def probabilities(
    theta: torch.Tensor, cands: Sequence[Candidate], memory_mb: int | None = None, phi: torch.Tensor | None = None
) -> torch.Tensor:
    """Measurement probabilities (len(cands), 2**n) for the shared angles theta: (L, n), or
    (L, n, k) when some candidate has k rotations per wire (each uses its first ones), and phi
    (L, P, m): the angles of parametrised entanglers (pair j of layer l uses phi[l, j, :m]).
    memory_mb: the budget of one step's simulation, met by simulating rows in chunks (`_chunked_group`)."""
    blocks = simulated_blocks(theta, cands, memory_mb, phi)
    if len(blocks) == 1:  # a copy of a constant block: the caller may write to what it gets
        probs = blocks[0][1]
        return probs if probs.grad_fn is not None else probs.clone()
    order = torch.argsort(torch.tensor([i for positions, _ in blocks for i in positions]))
    return torch.cat([probs for _, probs in blocks]).index_select(0, order.to(theta.device))


@lru_cache(maxsize=256)
def _positions(positions: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(positions, device=device)


def mixture(
    weights: torch.Tensor,
    theta: torch.Tensor,
    cands: Sequence[Candidate],
    memory_mb: int | None = None,
    phi: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_j weights[j] P_j (2**n,): DiffQAS's ensemble, one product per simulated block, with no
    (len(cands), 2**n) matrix gathered first."""
    total = None
    for positions, probs in simulated_blocks(theta, cands, memory_mb, phi):
        part = weights.index_select(0, _positions(positions, str(weights.device))).to(probs.dtype) @ probs
        total = part if total is None else total + part
    return total
