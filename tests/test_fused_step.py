"""The time-series step as one kernel call (train/fused_step.py) against the autograd path it
replaces: for a fixed Ry or constant candidate the same gradients bit for bit and the same run;
for DiffQAS's mixture and the closed forms the same within rounding, and against the textbook
simulator (tests/reference.py) and finite differences."""

from __future__ import annotations

import json

import pytest
import reference
import torch
from helpers import autograd_step_only, compose, load_kernel_or_skip, stop_in_training_step
from torch.func import functional_call

from diffqas_runner.config import validate
from diffqas_runner.qt.fused import mapped_weights
from diffqas_runner.quantum import native
from diffqas_runner.run import build, run, seed_everything
from diffqas_runner.train import fused_step


def _experiment(*overrides):
    cfg = compose(["task=bessel", "logger=none", "search=fixed", *overrides])
    validate(cfg)
    seed_everything(0)
    return cfg, build(cfg)


def _grads(generator) -> dict[str, torch.Tensor | None]:
    return {k: None if p.grad is None else p.grad.clone() for k, p in generator.named_parameters()}


@pytest.mark.parametrize("precision,extra", [("float64", []), ("float32", []), ("float64", ["qt.center_output=false"])])
def test_fused_step_gives_the_autograd_paths_gradients_bit_for_bit(monkeypatch, precision, extra):
    """Every candidate of the paper's space whose probabilities are one Ry row on the kernel or
    constant (10 of 12; the two closed forms keep autograd): the loss and every parameter's
    gradient equal the autograd path's exactly, over a few optimiser steps (so theta moves); with
    qt.center_output=false the mapping's bias trains too."""
    load_kernel_or_skip(monkeypatch)
    torch.set_num_threads(1)
    taken = []
    for arch in range(1, 13):
        _, exp = _experiment(f"search.arch={arch}", f"backend.precision={precision}", *extra)
        task, model, gen, opt = exp.task, exp.model, exp.generator, exp.optimizer
        step = fused_step.build(task, model, gen)
        mode = native._mode(gen.first.candidates[0], gen.first.n_qubits, gen.first.depth)
        assert isinstance(step, fused_step.FusedStep) == (mode in ("ry", "static")), (arch, mode)
        if not isinstance(step, fused_step.FusedStep):
            assert isinstance(step, fused_step.MixtureStep) and mode == "closed_form", (arch, mode)
            continue
        taken.append(arch)
        for i in range(3):
            x, y = task.train.x[10 * i : 10 * i + 10], task.train.y[10 * i : 10 * i + 10]
            opt.zero_grad(set_to_none=True)
            want_loss = task.loss(functional_call(model, gen(), (x,)), y)
            want_loss.backward()
            want = _grads(gen)
            opt.zero_grad(set_to_none=True)
            got_loss = step(x, y)
            got = _grads(gen)
            assert torch.equal(got_loss, want_loss.detach()), (arch, i)
            assert want.keys() == got.keys()
            for name in want:
                assert (want[name] is None) == (got[name] is None), (arch, name)
                if want[name] is not None:
                    assert torch.equal(got[name], want[name]), (arch, i, name, (got[name] - want[name]).abs().max())
            opt.step()
    assert taken == [1, 2, 3, 4, 5, 6, 8, 9, 11, 12]


@pytest.mark.parametrize(
    "overrides",
    [
        ["search=auto", "search.strategy=gumbel"],  # one sampled group a step
        ["search=auto", "search.angles=per_candidate"],
        ["search=auto", "search_space=toolkit_u3"],  # complex rows
        ["search=auto", "backend=pennylane"],
        ["search.arch=8", "backend=pennylane"],
        ["search.arch=8", "qt.tensor_scale=standardize"],
        ["search.arch=8", "qt.shots=1000"],
        ["search.arch=8", "qt.source=random"],
        ["search.arch=8", "qt.mapping_hidden=[4]"],
    ],
)
def test_other_structures_keep_the_autograd_step(monkeypatch, overrides):
    load_kernel_or_skip(monkeypatch)
    cfg = compose(["task=bessel", "logger=none", "search=fixed", *overrides])
    validate(cfg)
    exp = build(cfg)
    assert not fused_step.applies(exp.task, exp.model, exp.generator)
    assert fused_step.build(exp.task, exp.model, exp.generator) is None


def test_a_run_with_the_fused_step_is_the_autograd_runs_bit_for_bit(monkeypatch, tmp_path):
    """A short Bessel run of candidate 8 with and without the fused step: the same summary metrics
    and metrics rows; summary.json says which step ran."""
    load_kernel_or_skip(monkeypatch)
    cfg = compose(["task=bessel", "logger=none", "search=fixed", "search.arch=8", "train.max_steps=60", "figures=false"])
    fused = run(cfg, tmp_path / "fused", interactive=False)
    autograd_step_only(monkeypatch)
    plain = run(cfg, tmp_path / "autograd", interactive=False)
    assert (fused["simulator"]["step"], plain["simulator"]["step"]) == ("fused", "autograd")
    assert fused["steps"] == plain["steps"] == 60
    assert fused["metrics"] == plain["metrics"]

    def rows(path):
        return [
            {k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
            for line in (path / "metrics.jsonl").read_text().splitlines()
        ]

    assert rows(tmp_path / "fused") == rows(tmp_path / "autograd")


def test_the_fused_step_refuses_batches_it_would_misread(monkeypatch):
    load_kernel_or_skip(monkeypatch)
    _, exp = _experiment("search.arch=8")
    step = fused_step.build(exp.task, exp.model, exp.generator)
    x, y = exp.task.train.x[:4], exp.task.train.y[:4]
    step(x, y)
    bad = [(x.double(), y), (x[..., None], y), (torch.cat([x, x], 2), y), (x, y[:3]), (x, y.double()), (x, y.reshape(-1))]
    for bad_x, bad_y in bad:
        with pytest.raises(ValueError, match="the fused step takes"):
            step(bad_x, bad_y)


def _step_pair(task, model, gen, step, opt, x, y):
    """(loss, grads) of the autograd path, then of the fused step, at the same parameters."""
    opt.zero_grad(set_to_none=True)
    want_loss = task.loss(functional_call(model, gen(), (x,)), y)
    want_loss.backward()
    want = _grads(gen)
    opt.zero_grad(set_to_none=True)
    got_loss = step(x, y)
    return (want_loss.detach(), want), (got_loss, _grads(gen))


@pytest.mark.parametrize(
    "overrides,rtol",
    [
        (["search=auto"], 1e-10),  # DiffQAS, raw structural weights (the default)
        (["search=auto", "search.structural=softmax"], 1e-10),
        (["search=auto", "search.structural=softmax", "qt.center_output=false", "seed=3"], 1e-10),
        (["search=auto", "backend.precision=float32"], 1e-4),
        (["search=auto", "search.structural=softmax", "backend.precision=float32", "depth=3"], 1e-4),
        (["search.arch=7"], 1e-10),  # the closed forms: a mixture of one
        (["search.arch=10", "backend.precision=float32"], 1e-4),
        (["task=damped_shm", "search=auto", "qt.toolkit_negative=clamp"], 1e-10),
    ],
)
def test_the_mixture_step_agrees_with_the_autograd_path_within_rounding(monkeypatch, overrides, rtol):
    """DiffQAS's mixture (constant, Ry and closed-form rows) and the closed-form candidates: the
    loss and every gradient within rounding of the autograd path's over a few optimiser steps (its
    sums run in another order, so not bit for bit), float64 to 1e-10 relative (CONTRACT's policy)."""
    load_kernel_or_skip(monkeypatch)
    torch.set_num_threads(1)
    _, exp = _experiment(*overrides)
    task, model, gen, opt = exp.task, exp.model, exp.generator, exp.optimizer
    step = fused_step.build(task, model, gen)
    assert isinstance(step, fused_step.MixtureStep)
    for i in range(3):
        x, y = task.train.x[10 * i : 10 * i + 10], task.train.y[10 * i : 10 * i + 10]
        (want_loss, want), (got_loss, got) = _step_pair(task, model, gen, step, opt, x, y)
        assert torch.allclose(got_loss, want_loss, rtol=1e-6, atol=0), (i, got_loss, want_loss)
        assert want.keys() == got.keys()
        for name in want:
            assert (want[name] is None) == (got[name] is None), (i, name)
            if want[name] is not None:
                scale = want[name].abs().max()
                assert scale > 0, name
                err = float((got[name] - want[name]).abs().max() / scale)
                assert err <= rtol, (i, name, err)
        opt.step()
    live = {k.rsplit(".", 1)[-1] if "mapping" not in k else "mapping" for k, v in got.items() if v is not None}
    assert {"theta", "mapping"} <= live
    assert ("structural" in live) == (gen.first.structural is not None)


def test_the_mixture_step_against_the_textbook_simulator(monkeypatch):
    """The mixture's probabilities and its backward checked against code they share nothing with:
    P from the dense textbook simulator (tests/reference.py), mixed by torch's softmax, through the
    torch mapping; the loss to float32 rounding, the structural weights' and the mapping's
    gradients by autograd there, the angles' gradient along random directions by finite
    differences of the reference's P (fourth order)."""
    load_kernel_or_skip(monkeypatch)
    torch.set_num_threads(1)
    _, exp = _experiment("search=auto", "search.structural=softmax", "seed=5")
    task, model, gen, opt = exp.task, exp.model, exp.generator.first, exp.optimizer
    step = fused_step.build(task, model, exp.generator)
    x, y = task.train.x[:10], task.train.y[:10]
    with torch.no_grad():  # move the parameters off their symmetric start
        gen.structural.add_(0.05 * torch.randn(gen.structural.shape, dtype=gen.structural.dtype))
    opt.zero_grad(set_to_none=True)
    loss = step(x, y)
    dtheta, dstruct, dweight = gen.theta.grad.clone(), gen.structural.grad.clone(), gen.mapping[0].weight.grad.clone()

    theta = gen.theta.detach()
    rows = reference.probabilities(theta[..., None], gen.candidates)  # (12, 2**11)
    logits = gen.structural.detach().clone().requires_grad_(True)
    weight = gen.mapping[0].weight.detach().clone().requires_grad_(True)
    mixed = torch.softmax(logits, 0) @ rows
    probs = mixed.detach().requires_grad_(True)
    tensors = mapped_weights(gen.spec, gen._consts(), probs, weight, gen.mapping[0].bias.detach(), native=False)
    ref_loss = task.loss(functional_call(model, dict(zip(gen.names, tensors)), (x,)), y)
    ref_loss.backward()
    assert torch.allclose(loss, ref_loss.detach(), rtol=1e-6, atol=0), (loss, ref_loss)
    assert torch.allclose(dweight, weight.grad, rtol=1e-8, atol=1e-12 * float(weight.grad.abs().max()))
    dp = probs.grad  # the loss's gradient at the mixture's P
    (mixed * dp).sum().backward()
    assert torch.allclose(dstruct, logits.grad, rtol=1e-8, atol=1e-12 * float(logits.grad.abs().max()))
    coeffs = torch.softmax(gen.structural.detach(), 0)[:, None] * dp[None, :]
    gen_dirs = torch.Generator().manual_seed(0)
    for _ in range(2):
        direction = torch.randn(theta.shape, generator=gen_dirs, dtype=theta.dtype)
        want = reference.directional_derivative(theta[..., None], gen.candidates, coeffs, direction[..., None])
        got = float((dtheta * direction).sum())
        assert abs(got - want) <= 1e-9 * abs(want), (got, want)


def test_the_mixture_step_is_deterministic_and_thread_independent(monkeypatch):
    """The same parameters and batch give the same loss and gradients bit for bit, on one
    thread or two (every sum in a fixed order)."""
    load_kernel_or_skip(monkeypatch)
    _, exp = _experiment("search=auto", "search.structural=softmax")
    step = fused_step.build(exp.task, exp.model, exp.generator)
    x, y = exp.task.train.x[:10], exp.task.train.y[:10]
    results = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        exp.optimizer.zero_grad(set_to_none=True)
        results.append((step(x, y), _grads(exp.generator.first)))
    torch.set_num_threads(1)
    (loss0, grads0), *rest = results
    for loss, grads in rest:
        assert torch.equal(loss, loss0)
        assert all((grads0[k] is None and grads[k] is None) or torch.equal(grads0[k], grads[k]) for k in grads0)


def test_a_diffqas_run_with_the_mixture_step_matches_the_autograd_run(monkeypatch, tmp_path):
    """A short Bessel DiffQAS run with and without the mixture step: summary.json says which ran;
    metrics and the structural weights agree within rounding's drift over 60 steps."""
    load_kernel_or_skip(monkeypatch)
    cfg = compose(["task=bessel", "logger=none", "search=auto", "train.max_steps=60", "figures=false"])
    fused = run(cfg, tmp_path / "fused", interactive=False)
    autograd_step_only(monkeypatch)
    plain = run(cfg, tmp_path / "autograd", interactive=False)
    assert (fused["simulator"]["step"], plain["simulator"]["step"]) == ("fused", "autograd")
    assert fused["steps"] == plain["steps"] == 60
    for key, value in plain["metrics"].items():
        assert fused["metrics"][key] == pytest.approx(value, rel=1e-6), key
    assert fused["structural_weights"] == pytest.approx(plain["structural_weights"], rel=1e-8)


def test_a_run_resumed_on_another_step_path_says_so(monkeypatch, tmp_path):
    """A run stopped on the autograd step and resumed on the fused one reports the fused path and,
    in `simulator.earlier`, the autograd piece before it; a run resumed on its own path, or never
    stopped, has no earlier piece (CONTRACT "Reproducibility": results are compared knowingly)."""
    from diffqas_runner.train.checkpoint import Interrupted

    load_kernel_or_skip(monkeypatch)
    cfg = compose(["task=bessel", "logger=none", "search=auto", "train.max_steps=6", "figures=false"])
    whole = run(cfg, tmp_path / "whole", interactive=False)
    assert whole["simulator"]["step"] == "fused" and whole["simulator"]["earlier"] == []

    for directory, second_fused in (("switched", True), ("same", False)):
        autograd_step_only(monkeypatch)
        stop_in_training_step(monkeypatch, 3)
        with pytest.raises(Interrupted):
            run(cfg, tmp_path / directory, interactive=False)
        monkeypatch.undo()
        load_kernel_or_skip(monkeypatch)
        if not second_fused:
            autograd_step_only(monkeypatch)
        resumed = run(cfg, tmp_path / directory, interactive=False)
        assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 6
        if second_fused:
            assert resumed["simulator"]["step"] == "fused"
            (earlier,) = resumed["simulator"]["earlier"]
            assert earlier["step"] == "autograd"
            assert {k: v for k, v in earlier.items() if k != "step"} == {
                k: v for k, v in resumed["simulator"].items() if k not in ("step", "earlier")
            }
        else:
            assert resumed["simulator"]["step"] == "autograd" and resumed["simulator"]["earlier"] == []
        monkeypatch.undo()


def test_a_run_resumed_from_a_checkpoint_without_the_record_says_it_is_unknown(monkeypatch, tmp_path):
    """A checkpoint written before the pieces' records existed: the earlier piece is null (not
    known), never silently the resumed piece's path."""
    from diffqas_runner.train import checkpoint
    from diffqas_runner.train.checkpoint import Interrupted

    load_kernel_or_skip(monkeypatch)
    cfg = compose(["task=bessel", "logger=none", "search=fixed", "search.arch=8", "train.max_steps=5", "figures=false"])
    autograd_step_only(monkeypatch)
    stop_in_training_step(monkeypatch, 3)
    with pytest.raises(Interrupted):
        run(cfg, tmp_path / "old", interactive=False)
    monkeypatch.undo()
    load_kernel_or_skip(monkeypatch)
    path = tmp_path / "old" / "checkpoint.pt"
    saved = torch.load(path, weights_only=False)
    assert saved["meta"]["simulators"][-1]["step"] == "autograd"
    del saved["meta"]["simulators"]
    checkpoint.save_atomic(saved, path)
    resumed = run(cfg, tmp_path / "old", interactive=False)
    assert resumed["resumed_from_step"] == 2 and resumed["simulator"]["earlier"] == [None]
    assert torch.load(path, weights_only=True)["meta"]["simulators"][0] is None  # carried on to later pieces
