"""train/optim.py: torch's Adam and RMSprop without the torch.compile wrappers. Checked against the
stock torch.optim classes (the wrappers only add the torch._dynamo import in eager mode), and that a
whole run never imports torch._dynamo (a time series, and an image task through its own data reader)."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import env
from omegaconf import OmegaConf

from diffqas_runner.run import build_scheduler
from diffqas_runner.train import optim

CASES = [
    (optim.Adam, torch.optim.Adam, {"lr": 3e-2, "betas": (0.9, 0.99), "eps": 1e-8}),
    (optim.RMSprop, torch.optim.RMSprop, {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8}),
]


def _trajectory(cls, kwargs, steps, state=None, hooks=None):
    """`steps` updates of two tensors under the runs' schedule (a linear warm-up, then cosine: LinearLR,
    CosineAnnealingLR, SequentialLR), from seed 0's data; the final tensors and state."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(5, 3, generator=gen, dtype=torch.float64).requires_grad_(), torch.randn(7, generator=gen)]
    params[1].requires_grad_()
    opt = cls([{"params": [params[0]]}, {"params": [params[1]], "lr": kwargs["lr"] / 2}], **kwargs)
    if state is not None:
        opt.load_state_dict(state)
    if hooks is not None:
        opt.register_step_pre_hook(lambda *_: hooks.append("pre"))
        opt.register_step_post_hook(lambda *_: hooks.append("post"))
    sched = build_scheduler(opt, OmegaConf.create({"warmup_steps": 3, "lr_schedule": "cosine"}), max(steps, 1))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = (params[0].sin() ** 2).sum() + (params[1] ** 3).sum() * torch.randn((), generator=gen)
        loss.backward()
        opt.step()
        sched.step()
    return [p.detach().clone() for p in params], opt.state_dict()


def _same_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        sa, sb = a["state"][key], b["state"][key]
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), name


@pytest.mark.parametrize("ours,stock,kwargs", CASES, ids=["adam", "rmsprop"])
def test_same_updates_and_state_as_torch_optim_bit_for_bit(ours, stock, kwargs):
    stock([torch.zeros(1, requires_grad=True)], lr=0.1)  # torch now wraps the stock class's step in its hook wrapper
    my_hooks, their_hooks = [], []
    mine, my_state = _trajectory(ours, kwargs, 25, hooks=my_hooks)
    theirs, their_state = _trajectory(stock, kwargs, 25, hooks=their_hooks)
    assert my_hooks == their_hooks == ["pre", "post"] * 25  # once each, also after a stock instance patched torch's class
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))
    assert not torch.equal(mine[0], _trajectory(stock, kwargs, 0)[0][0])  # it moved
    _same_state(my_state, their_state)
    # a stock state dict (an older checkpoint) resumes in ours and the other way round
    _, stock_state = _trajectory(stock, kwargs, 4)
    _, our_state = _trajectory(ours, kwargs, 4)
    a, sa = _trajectory(ours, kwargs, 6, state=stock_state)
    b, sb = _trajectory(stock, kwargs, 6, state=our_state)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    _same_state(sa, sb)


def test_the_step_runs_without_grad_and_takes_a_closure():
    w = torch.ones(3, requires_grad=True)
    opt = optim.Adam([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w * torch.arange(3.0)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # an in-place update of a leaf that requires grad raises unless grad is off
        assert opt.step(closure).item() == 3.0
    assert w.tolist()[0] == 1.0 and w.tolist()[1] == pytest.approx(0.9) and w.tolist()[2] == pytest.approx(0.9)


@pytest.mark.parametrize("task", ["bessel", "mnist"])
def test_a_whole_run_never_imports_torch_dynamo(tmp_path, task, data_dir):
    """A smoke run's process: the optimiser, schedule, checkpoint and summary, and no torch._dynamo
    (an image run reads its data files without torchvision, whose package imports it)."""
    out = tmp_path / "run"
    script = f"""
import sys
sys.argv = ["diffqas-run", "task={task}", "data_dir={data_dir}", "debug=smoke", "logger=none", "figures=false",
            "hydra.run.dir={out}"]
from diffqas_runner.cli import main
try:
    main()
except SystemExit as exit_:
    assert exit_.code in (0, None), exit_.code
import torch.optim  # imported by then; importing it does not import torch._dynamo either
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "no dynamo"
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


def test_the_torch_it_was_checked_on_is_named_and_pinned():
    """optim.py reaches into torch's internals: the versions the comparisons above passed on are
    named in one place, and the pin CI installs is one of them (another torch: these tests still
    compare bit for bit with the stock classes, and this one says which torch to add)."""
    from pathlib import Path

    from diffqas_runner.train.optim import CHECKED_TORCH

    pins = (Path(__file__).resolve().parents[1] / "constraints.txt").read_text()
    pinned = next(line.split("==")[1].strip() for line in pins.splitlines() if line.startswith("torch=="))
    assert pinned in CHECKED_TORCH
    installed = torch.__version__.split("+")[0]
    if installed not in CHECKED_TORCH:  # the comparisons above ran on it: if they passed, name it
        pytest.skip(f"torch {installed} is not in optim.CHECKED_TORCH: add it if this file's comparisons passed")
