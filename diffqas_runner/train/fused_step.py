"""A time-series training step as one call of the C++ kernel (issue 36).

At the paper's sizes (11 qubits, an LSTM of 1,781 weights, batches of 10 windows) a step's
arithmetic is a millisecond or two on the kernel; torch's autograd around it (dozens of nodes,
the functional call of the target, the glue between them) cost as much again or more. For the
structures this file knows, the step runs as one kernel call instead (kernel.cpp: `lstm_tail`
from the probabilities to the loss's gradient at them, and what comes before it): the same
kernel functions the autograd path calls (the Ry rows, the mapping's front half, the LSTM), the
MSE's gradient in between (the loss itself is the task's, in torch). It writes the gradients into
the generator's parameters' `.grad`, as `loss.backward()` would; the optimiser, the checks, the
schedule and the checkpoints are the loop's own.

Two steps, chosen by structure (`build` returns None otherwise; `summary.json`'s
`simulator.step`: `fused`, else `autograd`):
- `FusedStep`, one fixed candidate whose probabilities come from one real Ry row on the kernel
  (sign-free or CZ entangler) or are constant (angle-independent): `qt_lstm_step`, in the
  autograd path's order and roundings, so its gradients are bitwise the autograd path's
  (tests/test_fused_step.py) and so is a run's summary.
- `MixtureStep`, DiffQAS's weighted mixture of every candidate (softmax or raw structural
  weights, shared angles, the paper's sampling-free ensemble) where each candidate is constant, a
  real Ry row or the IQP closed form (quantum/closed_form.py): the paper's space at its sizes;
  and a fixed closed-form candidate (candidates 7 and 10), as the mixture of one at weight 1.
  `qt_mix_lstm_step` sums the mixture and the transforms' gradients in its own fixed order, not
  BLAS's, so it agrees with the autograd path within rounding (tests: the loss and every
  gradient to 1e-10 relative in float64) and is bitwise reproducible on its own, whatever the
  thread count: a different path under CONTRACT's reproducibility policy.
Both need: exact probabilities, the paper's mapping with tensor_scale none and no affine, float64
or float32 simulation, float32 weights; the target `nets.LSTMRegressor` on the kernel; the MSE
loss; the kernel loaded.
"""

from __future__ import annotations

import torch

from ..nets import LSTMRegressor
from ..qt.fused import KERNEL_MAX_WEIGHTS
from ..quantum import closed_form, kernel, native

MIXTURE_MODES = ("static", "ry", "closed_form")  # the candidate paths `MixtureStep` runs


class _Step:
    """What both steps share: the generator's mapping arguments, the batch's checks, the
    mapping's gradients written, the loss."""

    def __init__(self, gen, model: LSTMRegressor, loss):
        self.gen, self.n, self.dtype = gen, gen.n_qubits, gen.options.dtype
        self.hidden, self.inputs = model.hidden, model.weight_ih.shape[1]
        spec = gen.spec
        self.p, self.flags, self.toolkit = spec.n_params, spec.flags, tuple(spec.toolkit)
        self.loss = loss

    def _batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[2] != self.inputs or x.dtype != torch.float32 or y.dtype != torch.float32:
            raise ValueError(
                f"the fused step takes float32 x (B, T, {self.inputs}) and y; got {x.dtype} {tuple(x.shape)}, {y.dtype}"
            )
        if tuple(y.shape) != (x.shape[0], 1):  # as the task's (N, 1): another shape would broadcast in the loss
            raise ValueError(f"the fused step takes y of shape ({x.shape[0]}, 1), one target per window; got {tuple(y.shape)}")
        return x.contiguous(), y.contiguous()

    def _mapping(self) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.gen.mapping[0]
        return kernel.map_args(first.weight, self.toolkit, float(first.bias.detach()))

    def _theta(self) -> torch.Tensor:
        return self.gen.theta.detach().to(torch.float64).contiguous()

    def _write(self, dw: torch.Tensor, dtheta: torch.Tensor | None) -> None:
        gen, first = self.gen, self.gen.mapping[0]
        if dtheta is not None and gen.theta.requires_grad:
            gen.theta.grad = dtheta.to(gen.theta.dtype)
        if first.weight.requires_grad:
            first.weight.grad = dw[:-1].to(first.weight.dtype)[None]
        if first.bias.requires_grad:
            first.bias.grad = dw[-1:].to(first.bias.dtype)


class FusedStep(_Step):
    """`step(x, y)`: the loss (a float32 scalar tensor) of one training step of a fixed candidate,
    gradients written."""

    def __init__(self, gen, model: LSTMRegressor, loss):
        super().__init__(gen, model, loss)
        cands, n, dtype = (gen.candidates[0],), self.n, self.dtype
        if native._mode(cands[0], n, gen.depth) == "static":  # a constant P: no circuit to run
            self.fixed = native._static_probabilities(cands[0], n, gen.depth, dtype, "cpu").contiguous()
            self.start = self.perm = self.sign = None
        else:
            self.fixed = None
            self.start = native._starts(cands, n, dtype)
            self.perm = native._permutations(cands, n)
            self.sign = native._signs(cands, n, dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        theta, (w, params) = self._theta(), self._mapping()
        x, y = self._batch(x, y)
        batch, steps, _ = x.shape
        pred = torch.empty(batch, 1, dtype=torch.float32)
        dtheta = torch.zeros(theta.shape, dtype=torch.float64)
        dw = torch.empty(self.n + 2, dtype=torch.float64)
        kernel._call(
            "qt_lstm_step", self.dtype, self.start, self.fixed, theta, theta.shape[0], self.perm, self.sign, self.n, w,
            params, self.p, self.flags, x, y.reshape(-1), batch, steps, self.inputs, self.hidden, pred, dtheta, dw,
        )  # fmt: skip
        self._write(dw, None if self.fixed is not None else dtheta)
        return self.loss(pred, y)


class MixtureStep(_Step):
    """`step(x, y)`: the loss of one training step of DiffQAS's mixture, gradients written (the
    angles', the structural weights' and the mapping's)."""

    def __init__(self, gen, model: LSTMRegressor, loss):
        super().__init__(gen, model, loss)
        n, depth, dtype = self.n, gen.depth, self.dtype
        modes = [native._mode(c, n, depth) for c in gen.candidates]

        def of(mode):
            at = [i for i, m in enumerate(modes) if m == mode]
            return tuple(gen.candidates[i] for i in at), torch.tensor(at, dtype=torch.int64)

        static, self.fixed_at = of("static")
        self.fixed = native._static_block(static, n, depth, dtype, "cpu").contiguous() if static else None
        ry, self.ry_at = of("ry")
        self.start = native._starts(ry, n, dtype) if ry else None
        self.perm = native._permutations(ry, n) if ry else None
        self.sign = native._signs(ry, n, dtype) if ry else None
        cf, self.cf_at = of("closed_form")
        self.index = torch.stack([closed_form.parity_rows(c.entangler, n, depth) for c in cf]).contiguous() if cf else None
        self.softmax = int(gen.structural is not None and gen.options.structural == "softmax")
        # a fixed candidate (a closed form) is the mixture of one, at weight 1 (exact: 1 * P_j + 0)
        self.ones = torch.ones(len(gen.candidates), dtype=dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = self.gen
        theta, (w, params) = self._theta(), self._mapping()
        structural = self.ones if gen.structural is None else gen.structural.detach().contiguous()
        x, y = self._batch(x, y)
        batch, steps, _ = x.shape
        pred = torch.empty(batch, 1, dtype=torch.float32)
        dtheta = torch.empty(theta.shape, dtype=torch.float64)
        dstruct = torch.empty(structural.shape, dtype=torch.float64)
        dw = torch.empty(self.n + 2, dtype=torch.float64)
        kernel._call(
            "qt_mix_lstm_step", self.dtype, self.fixed, self.fixed_at, len(self.fixed_at), self.start, self.perm,
            self.sign, self.ry_at, len(self.ry_at), self.index, self.cf_at, len(self.cf_at), theta, theta.shape[0],
            self.n, structural, len(structural), self.softmax, w, params, self.p, self.flags, x, y.reshape(-1), batch,
            steps, self.inputs, self.hidden, pred, dtheta, dstruct, dw,
        )  # fmt: skip
        self._write(dw, dtheta)
        if gen.structural is not None and gen.structural.requires_grad:
            gen.structural.grad = dstruct.to(gen.structural.dtype)
        return self.loss(pred, y)


def _common(task, model, gen) -> bool:
    """What both steps need of the run (the module docstring)."""
    opts, spec = gen.options, gen.spec
    if (
        not isinstance(model, LSTMRegressor)
        or not model.native
        or kernel.loaded() is None
        or gen.control is not None
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
    return [k for k, _ in model.named_parameters()] == names and gen.names == names


def _kind(task, model, generator) -> type[_Step] | None:
    """The step class for this run's structure, or None."""
    parts = getattr(generator, "parts", None)  # a GeneratorSet, or one Generator
    if parts is not None and len(parts) != 1:
        return None
    gen = _one(generator)
    if not _common(task, model, gen):
        return None
    opts = gen.options
    modes = {native._mode(c, gen.n_qubits, gen.depth) for c in gen.candidates}
    if opts.mode == "fixed" and modes <= {"static", "ry"}:
        return FusedStep
    mixture = opts.mode == "fixed" or (opts.sampling == "none" and not gen.per_candidate and gen.structural is not None)
    return MixtureStep if mixture and modes <= set(MIXTURE_MODES) else None


def applies(task, model, generator) -> bool:
    """Whether this run's step has a structure a fused step knows (the module docstring)."""
    return _kind(task, model, generator) is not None


def build(task, model, generator) -> _Step | None:
    """The fused step for this run, or None where its structure is not one a fused step knows."""
    kind = _kind(task, model, generator)
    return None if kind is None else kind(_one(generator), model, task.loss)


def _one(generator):
    return generator.first if hasattr(generator, "parts") else generator
