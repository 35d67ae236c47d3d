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
    from helpers import kernel_required

    from diffqas_runner.quantum import kernel

    monkeypatch.setenv(kernel.ENV, request.param)
    if request.param == "cpp":
        try:
            kernel.load()  # raises in cpp mode when the build failed, now or earlier in this process
        except RuntimeError as err:
            if kernel_required():
                pytest.fail(f"DIFFQAS_REQUIRE_KERNEL=1 and a C++ compiler is on PATH, but: {err}")
            pytest.skip(f"the C++ kernel could not be built here: {err}")
    else:
        assert kernel.load() is None
    return request.param
