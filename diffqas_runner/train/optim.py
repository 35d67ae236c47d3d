"""torch's Adam and RMSprop, without importing torch._dynamo.

torch.optim wraps `Optimizer.__init__`'s `add_param_group`, `zero_grad`, `state_dict`,
`load_state_dict` and every `step` in decorators that exist for `torch.compile`
(`torch._disable_dynamo`, `_use_grad_for_differentiable`). On their first call they import
torch._dynamo, which pulls in sympy, triton and torch.distributed: 2-3 s of every run's start-up
on the project's 2-core machine (docs/benchmarks.md, issue 26), for a compiler this project never
uses. The classes below call the same functions under those decorators (`inspect.unwrap`: also
past the step-hook wrapper torch puts on a class once an instance exists; ours has its own), so
the arithmetic is torch's own, bit for bit (tests/test_optim.py compares whole trajectories,
schedules and state dicts with the stock classes). The one thing `_use_grad_for_differentiable`
does in eager mode besides the import, setting grad mode to `differentiable` during the step, is
done here too. Where a future torch drops `__wrapped__`, the wrapped method is called: slower
start, same result. Image tasks no longer import it either: they read the raw data files
themselves (tasks/classification.py), and torchvision, whose package imports torch._dynamo
(torchvision.ops), only downloads.

Checked on: the torch versions in CHECKED_TORCH (constraints.txt pins one of them). It reaches into
torch's internals, so tests/test_optim.py compares it with the stock classes on whatever torch is
installed, and says so when that torch is not one of these.
"""

from __future__ import annotations

import inspect

import torch

CHECKED_TORCH = ("2.14.1",)  # torch releases the bit-for-bit comparison with the stock optimisers passed on


class _Eager:
    """The torch.optim methods a run calls, minus their torch.compile wrappers. Each is looked up
    on the torch class (`_torch_class`), so an override there is still the one called."""

    _torch_class: type[torch.optim.Optimizer]

    def _torch(self, name: str):
        return inspect.unwrap(getattr(self._torch_class, name))

    def add_param_group(self, param_group) -> None:
        self._torch("add_param_group")(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._torch("zero_grad")(self, set_to_none)

    def state_dict(self):
        return self._torch("state_dict")(self)

    def load_state_dict(self, state_dict) -> None:
        self._torch("load_state_dict")(self, state_dict)

    def step(self, closure=None):
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            return self._torch("step")(self, closure)


class Adam(_Eager, torch.optim.Adam):
    _torch_class = torch.optim.Adam


class RMSprop(_Eager, torch.optim.RMSprop):
    _torch_class = torch.optim.RMSprop
