"""What the end-to-end tests share: the CLI as a subprocess, its environment, waiting for a file."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
