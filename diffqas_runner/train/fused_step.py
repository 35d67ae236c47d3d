"""A time-series training step of a fixed candidate as one call of the C++ kernel (issue 36).

At the paper's sizes (11 qubits, an LSTM of 1,781 weights, batches of 10 windows) a step's
arithmetic is about half a millisecond on the kernel; torch's autograd around it (a dozen nodes,
the functional call of the target, the glue between them) cost three times that. For the
structure this file knows, the step runs as `kernel.cpp: qt_lstm_step` instead: the same kernel
functions the autograd path calls (the Ry rows, the mapping's front half, the LSTM), in its
order and with its roundings (P and kappa in the simulation's dtype, the weights and their
gradients in float32), the MSE's gradient in between (the loss itself is the task's, in torch). It
writes the gradients into the generator's parameters' `.grad`, as `loss.backward()` would; the
optimiser, the checks, the schedule and the checkpoints are the loop's own. The gradients are
bitwise the autograd path's (tests/test_fused_step.py), so a run's summary is too.

Chosen by structure (`build` returns None otherwise): one generator of one fixed candidate whose
probabilities come from one real Ry row on the kernel (sign-free or CZ entangler) or are constant
(angle-independent), exact probabilities, the paper's mapping with tensor_scale none and no
affine, float64 or float32 simulation, float32 weights; the target `nets.LSTMRegressor` on the
kernel; the MSE loss; the kernel loaded (`summary.json`'s `simulator.step`: `fused`, else `autograd`).
"""

from __future__ import annotations

import torch

from ..nets import LSTMRegressor
from ..qt.fused import KERNEL_MAX_WEIGHTS
from ..quantum import kernel, native


class FusedStep:
    """`step(x, y)`: the loss (a float32 scalar tensor) of one training step, gradients written."""

    def __init__(self, gen, model: LSTMRegressor, loss):
        cand = gen.candidates[0]
        n, dtype = gen.n_qubits, gen.options.dtype
        self.gen, self.n, self.dtype = gen, n, dtype
        self.hidden, self.inputs = model.hidden, model.weight_ih.shape[1]
        cands = (cand,)
        if native._mode(cand, n, gen.depth) == "static":  # a constant P: no circuit to run
            self.fixed = native._static_probabilities(cand, n, gen.depth, dtype, "cpu").contiguous()
            self.start = self.perm = self.sign = None
        else:
            self.fixed = None
            self.start = native._starts(cands, n, dtype)
            self.perm = native._permutations(cands, n)
            self.sign = native._signs(cands, n, dtype)
        spec = gen.spec
        self.p, self.flags, self.toolkit = spec.n_params, spec.flags, tuple(spec.toolkit)
        self.loss = loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen, n = self.gen, self.n
        first = gen.mapping[0]
        theta = gen.theta.detach().to(torch.float64).contiguous()
        w, params = kernel.map_args(first.weight, self.toolkit, float(first.bias.detach()))
        if x.dim() != 3 or x.shape[2] != self.inputs or x.dtype != torch.float32 or y.dtype != torch.float32:
            raise ValueError(
                f"the fused step takes float32 x (B, T, {self.inputs}) and y; got {x.dtype} {tuple(x.shape)}, {y.dtype}"
            )
        batch, steps, inputs = x.shape
        if tuple(y.shape) != (batch, 1):  # as the task's (N, 1): another shape would broadcast in the loss
            raise ValueError(f"the fused step takes y of shape ({batch}, 1), one target per window; got {tuple(y.shape)}")
        pred = torch.empty(batch, 1, dtype=torch.float32)
        dtheta = torch.zeros(theta.shape, dtype=torch.float64)
        dw = torch.empty(n + 2, dtype=torch.float64)
        x, y = x.contiguous(), y.contiguous()
        kernel._call(
            "qt_lstm_step", self.dtype, self.start, self.fixed, theta, theta.shape[0], self.perm, self.sign, n, w, params,
            self.p, self.flags, x, y.reshape(-1), batch, steps, inputs, self.hidden, pred, dtheta, dw,
        )  # fmt: skip
        if self.fixed is None and gen.theta.requires_grad:
            gen.theta.grad = dtheta.to(gen.theta.dtype)
        if first.weight.requires_grad:
            first.weight.grad = dw[:-1].to(first.weight.dtype)[None]
        if first.bias.requires_grad:
            first.bias.grad = dw[-1:].to(first.bias.dtype)
        return self.loss(pred, y)


def applies(task, model, generator) -> bool:
    """Whether this run's step has the structure `FusedStep` knows (the module docstring)."""
    parts = getattr(generator, "parts", None)  # a GeneratorSet, or one Generator
    if (parts is not None and len(parts) != 1) or not isinstance(model, LSTMRegressor) or not model.native:
        return False
    gen = _one(generator)
    opts, spec = gen.options, gen.spec
    if (
        kernel.loaded() is None
        or gen.control is not None
        or opts.mode != "fixed"
        or opts.backend != "native"
        or opts.shots is not None
        or not gen.fused
        or gen.phi is not None
        or gen.theta.dim() != 2
        or gen.theta.device.type != "cpu"
        or spec.tensor_scale != "none"
        or spec.affine
        or opts.dtype not in (torch.float64, torch.float32)
        or opts.out_dtype != torch.float32
        or not 1 < spec.n_params <= KERNEL_MAX_WEIGHTS
        or getattr(task, "loss_kind", None) != "mse"
    ):
        return False
    names = ["weight_ih", "weight_hh", "bias", "head.weight", "head.bias"]  # the order the kernel splits kappa in
    if [k for k, _ in model.named_parameters()] != names or gen.names != names:
        return False
    return native._mode(gen.candidates[0], gen.n_qubits, gen.depth) in ("static", "ry")


def build(task, model, generator) -> FusedStep | None:
    """The fused step for this run, or None where its structure is not the one `FusedStep` knows."""
    return FusedStep(_one(generator), model, task.loss) if applies(task, model, generator) else None


def _one(generator):
    return generator.first if hasattr(generator, "parts") else generator
