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
