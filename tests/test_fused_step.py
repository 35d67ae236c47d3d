"""The time-series step as one kernel call (train/fused_step.py) against the autograd path it
replaces: the same gradients bit for bit, for every candidate it takes, and the same run."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import compose, load_kernel_or_skip
from torch.func import functional_call

from diffqas_runner.config import validate
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
        assert (step is not None) == (mode in ("ry", "static")), (arch, mode)
        if step is None:
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
        ["search=auto"],  # DiffQAS: a mixture of blocks
        ["search.arch=7"],  # a closed form
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
    monkeypatch.setattr(fused_step, "applies", lambda *args: False)
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
