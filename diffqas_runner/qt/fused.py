"""The generator's classical part, and the same as one autograd node (issue 36).

From the circuit's probabilities P to the target's tensors the generator takes a dozen small
steps: the first p entries, the post-processing (toolkit, scale or none), the input norm, the
mapping Linear(n+1 -> 1) on [bits, x], the centring, the per-tensor scaling (standardize, init,
fan_in, none; tensor_affine's gain and shift), the cast to the target's dtype and the split into
its tensors. Recorded by autograd op by op that is about 40 nodes a step, and at the paper's
sizes (p of 2**11 weights) each costs more in dispatch than in arithmetic.

The steps are written once, here (`postprocess`, `standardize`, `scale_tensors`), and run two
ways. `Generator.flat_weights` records them with autograd (any mapping, hidden layers too).
`mapped_weights` runs them under one `torch.autograd.Function` for the paper's mapping (no hidden
layer): its forward is the same code, so the generated weights are bitwise the recorded chain's,
and its backward is the chain's gradient written out by hand in a few vector operations.

Where the circuit is simulated on the C++ kernel (`simulator.kernel: cpp` in the summary) and the
target has at most KERNEL_MAX_WEIGHTS weights, the node's front half (post-processing, input
norm, mapping, centring) is one call of kernel.cpp each way (`qtmap_forward`, `qtmap_backward`:
float64 sums, one thread, deterministic); the per-tensor scaling stays in torch. Both paths agree
with the recorded chain within rounding and with finite differences (tests/test_fused.py): a
change of arithmetic under CONTRACT's reproducibility policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quantum import kernel

TINY = 1e-12  # the toolkit's clamp before the power
# kernel.cpp runs the front half for up to this many weights, where torch's dispatch costs more
# than the arithmetic (2**11 weights: about 0.5 ms a step less); above, torch's vectorised tanh
# and pow beat the kernel's scalar loop (post-processing alone at 2**14 weights: 4.3 ms on the
# kernel, 4.7 recorded; at 2**17, 15-23 against 9-18 ms: docs/benchmarks.md)
KERNEL_MAX_WEIGHTS = 2**13


@dataclass(frozen=True)
class MapSpec:
    """What the chain does, fixed when the generator is built (its options and the target's sizes)."""

    n_qubits: int
    postprocess: str  # toolkit | scale | none
    toolkit: tuple[float, float, float]  # gamma, beta, alpha
    odd: bool  # qt.toolkit_negative=odd: -(-t)^alpha for negative entries (else clamped to ~0)
    standardize_input: bool  # qt.input_norm=standardize
    center: bool  # qt.center_output
    tensor_scale: str  # standardize | init | fan_in | none
    affine: bool  # qt.tensor_affine
    bits_pm1: bool  # qt.mapping_bits=pm1: the mapping reads a basis state's bits as -1/+1 (else 0/1)
    sizes: tuple[int, ...]
    shapes: tuple[torch.Size, ...]
    out_dtype: torch.dtype

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    @property
    def flags(self) -> int:
        """kernel.cpp's qtmap flags for the front half (post-processing to centring)."""
        return (
            kernel.MAP_POST[self.postprocess]
            | (kernel.MAP_ODD if self.odd else 0)
            | (kernel.MAP_STD if self.standardize_input else 0)
            | (kernel.MAP_CENTER if self.center else 0)
            | (kernel.MAP_PM1 if self.bits_pm1 else 0)
        )


# --- the steps ------------------------------------------------------------------------------
def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(shift, divisor, spread) that standardise x. A constant vector (an angle-independent
    candidate) gets divisor 1 (spread False), so float rounding is never blown up into weights; a
    one-element tensor (a lone output bias) gets (0, 1, None): it has no spread and stays as mapped."""
    if x.numel() == 1:
        return torch.zeros_like(x[0]), torch.ones_like(x[0]), None
    mean = x.mean()
    std = (x - mean).std()
    spread = std > 1e-6 * x.detach().abs().max().clamp_min(torch.finfo(x.dtype).tiny)
    return mean, torch.where(spread, std, torch.ones_like(std)), spread


def mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The shift and divisor that standardise x (see `moments`)."""
    mean, divisor, _ = moments(x)
    return mean, divisor


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std (see `moments` for constant and one-element inputs)."""
    mean, std = mean_std(x)
    return (x - mean) / std


def postprocess(u: torch.Tensor, spec: MapSpec) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(x, a, t): qt.postprocess of the probabilities u; for the toolkit also a = tanh(gamma 2**(n-1) u)
    and t = beta a, which its gradient reads."""
    n = spec.n_qubits
    if spec.postprocess == "none":
        return u, None, None
    if spec.postprocess == "scale":
        return u * 2**n, None, None
    gamma, beta, alpha = spec.toolkit
    a = torch.tanh(gamma * 2 ** (n - 1) * u)
    t = beta * a
    if spec.odd:  # raw structural weights can make entries of P negative: -(-t)^alpha keeps their gradient
        m = t.abs().clamp_min(TINY) ** alpha
        x = torch.where(t < 0, -m, m)
    else:
        x = t.clamp_min(TINY) ** alpha
    return x - x.mean(), a, t


def linear_map(z: torch.Tensor, bits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The mapping's first Linear on the rows [bits_i, z_i], as bits @ W_bits^T + b + z W_z: the (p,
    n+1) input is never assembled (at 17 qubits a copy of 18 MB each step). Shape (p, out)."""
    n = bits.shape[1]
    return torch.addmm(bias, bits, weight[:, :n].T) + z[:, None] * weight[:, n]


def scale_tensors(kappa: torch.Tensor, spec: MapSpec, consts: dict, gain=None, shift=None):
    """(flat, q, stats): qt.tensor_scale and tensor_affine on the mapped kappa; q is kappa
    standardised (or kappa), stats each tensor's `moments` divisor and spread (standardize)."""
    index, stats = consts["tensor_index"], None
    q = kappa
    if spec.tensor_scale == "standardize":
        parts = kappa.split(spec.sizes)
        moms = [moments(t) for t in parts]
        q = torch.cat([(t - m) / sd for t, (m, sd, _) in zip(parts, moms)])
        stats = [(sd, spread) for _, sd, spread in moms]
    elif spec.tensor_scale == "init":
        q = (kappa - consts["init_mean"][index]) / consts["init_std"][index]
    if spec.affine:
        return q * consts["scale"] * gain[index] + shift[index], q, stats
    return (q if spec.tensor_scale == "none" else q * consts["scale"]), q, stats  # scale is all ones with none


# --- their gradients, by hand -----------------------------------------------------------------
def standardize_backward(dz: torch.Tensor, z: torch.Tensor, divisor: torch.Tensor, spread: torch.Tensor | None) -> torch.Tensor:
    """The gradient through `standardize` (z its output, divisor and spread from `moments`): the
    mean's and the unbiased std's terms; a divisor held at 1 passes no gradient to the std."""
    if spread is None:
        return dz
    centred = dz - dz.mean()
    full = (centred - z * ((dz * z).sum() / (dz.numel() - 1))) / divisor
    return torch.where(spread, full, centred)


def postprocess_backward(dx: torch.Tensor, spec: MapSpec, a, t) -> torch.Tensor:
    n = spec.n_qubits
    if spec.postprocess == "none":
        return dx
    if spec.postprocess == "scale":
        return dx * 2**n
    gamma, beta, alpha = spec.toolkit
    dx = dx - dx.mean()
    magnitude = t.abs() if spec.odd else t
    dt = torch.where(magnitude >= TINY, dx * (alpha * magnitude.clamp_min(TINY) ** (alpha - 1)), 0.0)
    return dt * beta * (1 - a * a) * (gamma * 2 ** (n - 1))


class _MappedWeights(torch.autograd.Function):
    """P, the mapping's weight and bias, the affine gain and shift -> the target's tensors."""

    @staticmethod
    def forward(ctx, spec: MapSpec, consts: dict, native: bool, probs, weight, bias, gain, shift):
        ctx.native = native and _kernel_takes(probs, spec)
        if ctx.native:  # the front half in one call of kernel.cpp
            z, a, kappa, stats = kernel.map_forward(
                probs, weight, float(bias), spec.n_params, spec.n_qubits, spec.flags, spec.toolkit
            )
            ctx.moments, t = stats, None
        else:
            x, a, t = postprocess(probs[: spec.n_params], spec)
            moms = None
            if spec.standardize_input:
                mean, divisor, spread = moms = moments(x)
                z = (x - mean) / divisor
            else:
                z = x
            kappa = linear_map(z, consts["bits"], weight, bias).squeeze(1)
            if spec.center:
                kappa = kappa - kappa.mean()
            ctx.moments = moms and moms[1:]
        flat, q, stats = scale_tensors(kappa, spec, consts, gain, shift)
        ctx.spec, ctx.consts, ctx.length, ctx.stats = spec, consts, probs.shape[0], stats
        ctx.save_for_backward(z, q, weight, gain, a, t)
        flat = flat.to(spec.out_dtype)
        return tuple(piece.view(shape) for piece, shape in zip(flat.split(spec.sizes), spec.shapes))

    @staticmethod
    def backward(ctx, *grads):
        spec, consts = ctx.spec, ctx.consts
        z, q, weight, gain, a, t = ctx.saved_tensors
        index = consts["tensor_index"]
        zeros = {"dtype": spec.out_dtype, "device": z.device}
        g = torch.cat([d.reshape(-1) if d is not None else torch.zeros(k, **zeros) for d, k in zip(grads, spec.sizes)])
        g = g.to(z.dtype)
        d_gain = d_shift = None
        if spec.affine:
            count = len(spec.sizes)
            if ctx.needs_input_grad[6]:
                d_gain = torch.zeros(count, dtype=z.dtype, device=z.device).index_add_(0, index, g * q * consts["scale"])
            if ctx.needs_input_grad[7]:
                d_shift = torch.zeros(count, dtype=z.dtype, device=z.device).index_add_(0, index, g)
            g = g * consts["scale"] * gain[index]
        elif spec.tensor_scale != "none":
            g = g * consts["scale"]
        if spec.tensor_scale == "standardize":
            pieces = zip(g.split(spec.sizes), q.split(spec.sizes), ctx.stats)
            g = torch.cat([standardize_backward(dq, qs, *stats) for dq, qs, stats in pieces])
        elif spec.tensor_scale == "init":
            g = g / consts["init_std"][index]
        if ctx.native:
            du, dw = kernel.map_backward(g, z, a, weight, ctx.moments, spec.n_qubits, spec.flags, spec.toolkit)
            d_weight = dw[:-1].to(weight.dtype)[None] if ctx.needs_input_grad[4] else None
            d_bias = dw[-1:].to(weight.dtype) if ctx.needs_input_grad[5] else None
        else:
            if spec.center:
                g = g - g.mean()
            d_weight = torch.cat([g @ consts["bits"], (g @ z)[None]])[None] if ctx.needs_input_grad[4] else None
            d_bias = g.sum()[None] if ctx.needs_input_grad[5] else None
            du = None
            if ctx.needs_input_grad[3]:
                dx = g * weight[0, -1]
                if ctx.moments is not None:
                    dx = standardize_backward(dx, z, *ctx.moments)
                du = postprocess_backward(dx, spec, a, t)
        d_probs = None
        if ctx.needs_input_grad[3]:
            d_probs = torch.nn.functional.pad(du, (0, ctx.length - du.shape[0]))
        return None, None, None, d_probs, d_weight, d_bias, d_gain, d_shift


def _kernel_takes(probs: torch.Tensor, spec: MapSpec) -> bool:
    """Whether kernel.cpp can run the front half: loaded in this process, CPU float32/float64."""
    return (
        kernel.loaded() is not None
        and probs.device.type == "cpu"
        and probs.dtype in (torch.float32, torch.float64)
        and 1 < spec.n_params <= KERNEL_MAX_WEIGHTS
    )


def mapped_weights(
    spec: MapSpec, consts: dict, probs, weight, bias, gain=None, shift=None, native: bool = False
) -> tuple[torch.Tensor, ...]:
    """The target's tensors (spec.shapes, in spec.out_dtype) from the probabilities, as one autograd
    node; consts: the generator's bits, tensor_index and scale (init_mean, init_std for init).
    native: run the front half in kernel.cpp where it can (a circuit simulated on the kernel)."""
    return _MappedWeights.apply(spec, consts, native, probs, weight, bias, gain, shift)
