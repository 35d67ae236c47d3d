import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The offline image data: $DIFFQAS_DATA_DIR or ../shared/data next to the repository."""
    # resolved here, once: the CLI tests start subprocesses in other working directories
    path = Path(os.environ.get("DIFFQAS_DATA_DIR") or REPO.parent / "shared" / "data").resolve()
    if not (path / "MNIST" / "raw").is_dir():
        pytest.fail(f"offline data not found at {path}: set DIFFQAS_DATA_DIR")
    return path


@pytest.fixture(params=["torch", "cpp"])
def kernel_mode(request, monkeypatch):
    """Run a test on the pure-torch layers and on the C++ kernel (the kernel case skips where it
    cannot build, and fails there when kernel_required())."""
    from helpers import load_kernel_or_skip

    from diffqas_runner.quantum import kernel

    if request.param == "cpp":
        load_kernel_or_skip(monkeypatch)  # cpp mode raises when the build failed, now or earlier in this process
    else:
        monkeypatch.setenv(kernel.ENV, request.param)
        assert kernel.load() is None
    return request.param
