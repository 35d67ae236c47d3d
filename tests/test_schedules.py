"""The per-step learning-rate schedules (`train.lr_schedule`, `train.warmup_steps`)."""

import math
from types import SimpleNamespace

import pytest
import torch

from diffqas_runner.run import build_scheduler


def _lrs(schedule, warmup, total, lr=0.01, resume_at=None):
    """The lr used at each of `total` steps; with resume_at, the scheduler and optimiser are rebuilt
    from their state_dicts at that step, as a resumed run does."""
    cfg = SimpleNamespace(lr_schedule=schedule, warmup_steps=warmup)

    def build():
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.RMSprop([param], lr=lr)
        return opt, build_scheduler(opt, cfg, total)

    opt, sched = build()
    lrs = []
    for step in range(total):
        if step == resume_at and sched is not None:
            state = (opt.state_dict(), sched.state_dict())
            opt, sched = build()
            opt.load_state_dict(state[0])
            sched.load_state_dict(state[1])
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return lrs


def test_constant_without_warmup_has_no_scheduler():
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    assert build_scheduler(opt, SimpleNamespace(lr_schedule="constant", warmup_steps=0), 100) is None


def test_cosine_decays_to_zero_over_the_run():
    lrs = _lrs("cosine", 0, 100)
    assert lrs[0] == 0.01 and lrs[50] == pytest.approx(0.005) and lrs[-1] < 1e-5
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_ramps_linearly_then_follows_the_schedule(schedule):
    lrs = _lrs(schedule, 10, 110)
    # torch's LinearLR from 1/10 of the lr to the full lr in 10 steps
    assert lrs[:11] == pytest.approx([0.01 * (0.1 + 0.09 * k) for k in range(11)])
    if schedule == "constant":
        assert lrs[10:] == pytest.approx([0.01] * 100)
    else:  # the cosine runs over the 100 steps after the warm-up
        assert lrs[60] == pytest.approx(0.005) and lrs[-1] < 1e-5
        assert lrs[35] == pytest.approx(0.005 * (1 + math.cos(math.pi * 25 / 100)))


@pytest.mark.parametrize("resume_at", [5, 40])
def test_schedule_resumes_from_its_state(resume_at):
    assert _lrs("cosine", 10, 60, resume_at=resume_at) == _lrs("cosine", 10, 60)
