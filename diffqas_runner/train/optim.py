"""torch's Adam and RMSprop, without importing torch._dynamo.

torch.optim wraps `Optimizer.__init__`'s `add_param_group`, `zero_grad`, `state_dict`,
`load_state_dict` and every `step` in decorators that exist for `torch.compile`
(`torch._disable_dynamo`, `_use_grad_for_differentiable`). On their first call they import
torch._dynamo, which pulls in sympy, triton and torch.distributed: 2-3 s of every run's start-up
on the project's 2-core machine (docs/benchmarks.md, issue 26), for a compiler this project never
uses. The classes below call the same functions under those decorators (their `__wrapped__`),
so the arithmetic is torch's own, bit for bit (tests/test_optim.py compares whole trajectories and
state dicts with the stock classes). The one thing `_use_grad_for_differentiable` does in eager
mode besides the import, turning grad off during the step, is done here with `torch.no_grad()`.
Where a future torch drops `__wrapped__`, the wrapped method is called: slower start, same result.
"""

from __future__ import annotations

import torch


def _unwrapped(method):
    return getattr(method, "__wrapped__", method)


_OPTIMIZER = torch.optim.Optimizer


class _Eager:
    """The torch.optim.Optimizer methods a run calls, minus their torch.compile wrappers."""

    def add_param_group(self, param_group) -> None:
        _unwrapped(_OPTIMIZER.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _unwrapped(_OPTIMIZER.zero_grad)(self, set_to_none)

    def state_dict(self):
        return _unwrapped(_OPTIMIZER.state_dict)(self)

    def load_state_dict(self, state_dict) -> None:
        _unwrapped(_OPTIMIZER.load_state_dict)(self, state_dict)

    def step(self, closure=None):
        step = _unwrapped(self._torch_class.step)
        if self.defaults.get("differentiable"):
            return step(self, closure)
        with torch.no_grad():
            return step(self, closure)


class Adam(_Eager, torch.optim.Adam):
    _torch_class = torch.optim.Adam


class RMSprop(_Eager, torch.optim.RMSprop):
    _torch_class = torch.optim.RMSprop
