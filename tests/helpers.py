"""What the end-to-end tests share: the CLI as a subprocess, its environment, waiting for a file."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffqas_runner.quantum import groups  # confirm: the structural grouping checked numerically

CLI = [sys.executable, "-m", "diffqas_runner"]


def env(**extra) -> dict:
    """This process's environment with wandb off and Hydra's short error messages (override with extra)."""
    return {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", **extra}


def cli(args, cwd, environ=None, timeout=600) -> subprocess.CompletedProcess:
    """`diffqas-run *args` in cwd, to the end, output captured as text."""
    return subprocess.run([*CLI, *args], cwd=cwd, env=environ or env(), capture_output=True, text=True, timeout=timeout)


def popen(args, cwd) -> subprocess.Popen:
    """`diffqas-run *args` started in the background, output captured as text."""
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc, timeout=600) -> None:
    """Until `path` exists; fails if `proc` ends first (or after `timeout`, a safety net only)."""
    wait_until(path.exists, proc, f"{path} never appeared", timeout)


def wait_until(condition, proc, what: str = "the condition never held", timeout=600) -> None:
    """Until `condition()` holds: the state a test needs, however slow the machine; fails if
    `proc` ends first. `timeout` is only a safety net against a hung process."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def metrics_rows(run_dir: Path) -> list[dict]:
    """The complete rows of a run's metrics.jsonl so far (a line being written is skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else ():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def kernel_required() -> bool:
    """CI's promise (.ci/run sets DIFFQAS_REQUIRE_KERNEL=1): where a C++ compiler is on PATH, the
    C++ kernel builds, so its tests fail instead of skipping when it does not."""
    return os.environ.get("DIFFQAS_REQUIRE_KERNEL") == "1" and shutil.which(os.environ.get("CXX") or "c++") is not None


def load_kernel_or_skip(monkeypatch):
    """Switch this test to DIFFQAS_NATIVE_KERNEL=cpp and load the C++ kernel: skip where it cannot
    be built, fail there when kernel_required()."""
    import pytest

    from diffqas_runner.quantum import kernel

    monkeypatch.setenv(kernel.ENV, "cpp")
    try:
        return kernel.load()
    except RuntimeError as err:
        if kernel_required():
            pytest.fail(f"DIFFQAS_REQUIRE_KERNEL=1 and a C++ compiler is on PATH, but: {err}")
        pytest.skip(f"the C++ kernel could not be built here: {err}")


def autograd_step_only(monkeypatch):
    """Training takes the autograd step: no fused step is built (train/fused_step.py), and the
    summary's `simulator.step` says `autograd`."""
    from diffqas_runner.train import fused_step

    monkeypatch.setattr(fused_step, "applies", lambda *args: False)
    monkeypatch.setattr(fused_step, "build", lambda *args: None)


def stop_in_training_step(monkeypatch, step: int):
    """A Ctrl-C inside the autograd step's target forward of training step `step` (1-based): the
    run checkpoints the steps before it and raises Interrupted (the fused step never calls it)."""
    import signal

    from diffqas_runner.train import supervised
    from diffqas_runner.train.checkpoint import StopRequested

    real, calls = supervised.functional_call, []

    def stopping(model, params, args):
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == step:
                raise StopRequested(signal.SIGINT)
        return real(model, params, args)

    monkeypatch.setattr(supervised, "functional_call", stopping)


def compose(overrides):
    """The run config `diffqas-run *overrides` would make (Hydra's compose API, in-process)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from diffqas_runner.cli import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def first_by_default(cases, ids=None) -> list:
    """Parametrize cases with every case but the first marked slow: the default suite checks each
    promise once through the command line (a few seconds a process), CI's slow suite all cases."""
    import pytest

    out = []
    for i, case in enumerate(cases):
        values = case if isinstance(case, tuple) else (case,)
        marks = () if i == 0 else pytest.mark.slow
        out.append(pytest.param(*values, marks=marks, id=None if ids is None else ids[i]))
    return out


# --- a check that lives with the tests: the structural grouping against an independent simulator --
def confirm(cands, n: int, depth: int, probabilities, seed: int = 0, atol: float = 1e-12, distinct: bool = True) -> None:
    """Check the structural claims numerically at two random angle sets: members of a group give
    the same probabilities, angle-independent candidates the same at both and the distribution
    their signature names (uniform from H, |0..0> otherwise), and (`distinct`) different groups
    differ. Raises AssertionError otherwise. (Different structures can coincide by accident, e.g.
    Rx and Ry layers on |0..0> with no entangler, so `distinct` is for spaces whose members are
    known to differ.)

    `probabilities(theta, cands)` is the simulator the claims are checked against. It must share
    no code with what made them: the native simulator simulates every candidate called
    angle-independent once, at theta = 0, so it cannot catch a false claim. The tests pass
    PennyLane or a dense textbook simulator (tests/reference.py)."""
    gen = torch.Generator().manual_seed(seed)
    k = max(c.rotation.n_angles for c in cands)
    shape = (depth, n) if k == 1 else (depth, n, k)
    thetas = [torch.rand(shape, generator=gen, dtype=torch.float64) * 4 * torch.pi for _ in range(2)]
    ent = [c for c in cands if c.entangler.parametrised]
    if ent:  # parametrised entanglers: random phi too, passed as `phi=`
        phi_shape = (depth, max(len(c.entangler.pairs_on(n)) for c in ent), max(c.entangler.n_angles for c in ent))
        phis = [torch.rand(phi_shape, generator=gen, dtype=torch.float64) * 4 * torch.pi for _ in range(2)]
        probs = [probabilities(t, list(cands), phi=f) for t, f in zip(thetas, phis)]
    else:
        probs = [probabilities(t, list(cands)) for t in thetas]
    index = {c.number: i for i, c in enumerate(cands)}
    found = groups.output_groups(cands, n, depth)
    for group in found:
        for p in probs:
            for member in group[1:]:
                assert torch.allclose(p[index[member]], p[index[group[0]]], atol=atol), f"group {group} differs"
    for number in groups.angle_independent(cands, n, depth):
        assert torch.allclose(probs[0][index[number]], probs[1][index[number]], atol=atol), f"{number} depends on theta"
        signature = groups._signature(cands[index[number]], n, depth)
        expected = torch.full((2**n,), 2.0**-n, dtype=torch.float64) if signature == ("uniform",) else torch.eye(1, 2**n)[0]
        for p in probs:
            assert torch.allclose(p[index[number]].double(), expected.double(), atol=atol), f"{number} is not {signature[0]}"
    for a in found if distinct else ():
        for b in found:
            if a[0] < b[0]:
                assert not torch.allclose(probs[0][index[a[0]]], probs[0][index[b[0]]], atol=atol), f"{a} and {b} agree"
