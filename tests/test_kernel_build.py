"""The C++ kernel's build: a run never waits for the compiler (a detached background build, pure
torch until a later process finds the library), no compiler falls back or fails as the mode says,
and a build is never half-visible."""

import logging
import os
import subprocess
import sys
import time

import pytest

from diffqas_runner.quantum import kernel

DEADLINE = 900  # a safety net against a hung compiler only: the tests wait for states, not times


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """This process as if it had never looked for the kernel, with an empty cache of its own."""
    monkeypatch.setenv("DIFFQAS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(kernel.ENV, raising=False)
    monkeypatch.setattr(kernel, "_tried", False)
    monkeypatch.setattr(kernel, "_module", None)
    monkeypatch.setattr(kernel, "_error", None)
    return tmp_path / "cache"


def _wait_until(predicate):
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < DEADLINE, "the background build neither finished nor failed"
        time.sleep(0.05)


def _compiler_or_skip():
    import shutil

    if shutil.which(kernel.compiler()) is None:
        from helpers import kernel_required

        assert not kernel_required()
        pytest.skip("no C++ compiler on PATH")


def test_auto_mode_builds_in_the_background_and_a_later_process_uses_it(fresh, caplog):
    _compiler_or_skip()
    path = kernel.library_path()
    assert path.parent == fresh and not path.exists()
    with caplog.at_level(logging.INFO, logger="diffqas_runner"):
        assert kernel.load() is None  # this process: pure torch, no wait
    assert "in the background; this run uses pure torch" in caplog.text
    lock = path.with_suffix(".building")
    # the build is under way (or already done): a second request starts no second compiler
    assert lock.exists() or path.exists()
    _wait_until(lambda: not lock.exists())
    assert path.is_file(), path.with_suffix(".log").read_text()
    assert kernel.load() is None  # decided once per process: no switch halfway through a run
    probe = "from diffqas_runner.quantum import kernel; print(kernel.load() is not None)"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=os.environ)
    assert res.stdout.strip() == "True", res.stderr
    assert sorted(p.name for p in fresh.iterdir()) == sorted([path.name, path.with_suffix(".log").name])


def test_a_build_under_way_is_not_started_twice(fresh):
    path = kernel.library_path()
    fresh.mkdir(parents=True)
    lock = path.with_suffix(".building")
    lock.touch()  # another process's build
    assert kernel.build_in_background() is True
    assert sorted(p.name for p in fresh.iterdir()) == [lock.name]  # no log, no second build
    os.utime(lock, (time.time() - kernel.STALE_SECONDS - 1,) * 2)  # abandoned long ago
    _compiler_or_skip()
    assert kernel.build_in_background() is True
    _wait_until(lambda: not lock.exists())
    assert path.is_file()


@pytest.mark.parametrize("cxx", ["/nonexistent/c++", "false"])
def test_without_a_working_compiler_auto_runs_on_torch_and_cpp_says_why(fresh, monkeypatch, cxx):
    monkeypatch.setenv("CXX", cxx)
    path = kernel.library_path()
    assert kernel.load() is None
    if cxx == "false":  # a compiler that fails: the background build leaves no library and no lock
        _wait_until(lambda: not path.with_suffix(".building").exists())
    assert not path.exists()
    assert not list(fresh.glob("*.tmp")) and not list(fresh.glob("tmp*"))
    monkeypatch.setenv(kernel.ENV, "cpp")
    with pytest.raises(RuntimeError, match=r"DIFFQAS_NATIVE_KERNEL=cpp but the C\+\+ kernel did not build"):
        kernel.load()
    with pytest.raises(RuntimeError, match="did not build"):  # and on every later call
        kernel.load()
    assert not path.exists() and not list(fresh.glob("tmp*"))


def test_cpp_mode_builds_now_and_the_library_name_tracks_the_compiler(fresh, monkeypatch):
    _compiler_or_skip()
    monkeypatch.setenv(kernel.ENV, "cpp")
    assert kernel.load() is not None
    assert kernel.library_path().is_file()
    monkeypatch.setenv("CXX", "g++" if kernel.compiler() != "g++" else "c++")
    assert not kernel.library_path().exists()  # another compiler: another file, never a stale one


def test_the_kernel_refuses_tensors_it_would_misread(monkeypatch):
    """Raw pointers: a perm of another dtype or layout, or a sign of another dtype, is an error, not
    a read past a buffer; a non-contiguous state is copied, not misread."""
    import torch
    from helpers import load_kernel_or_skip

    load_kernel_or_skip(monkeypatch)
    rows, n = 2, 3
    state = torch.rand(rows, 2**n, dtype=torch.float64)
    theta = torch.rand(1, n, dtype=torch.float64)
    perm = torch.arange(2**n, dtype=torch.int32).repeat(rows, 1)
    good = kernel.RyLayers.apply(state, theta, perm, None)
    transposed = state.T.contiguous().T  # the same values, column-major
    torch.testing.assert_close(kernel.RyLayers.apply(transposed, theta, perm, None), good, rtol=0, atol=0)
    for bad_perm in (perm.long(), torch.arange(2**n, dtype=torch.int32).expand(rows, 2**n), perm[:, :4]):
        with pytest.raises(ValueError, match="perm must be a contiguous int32"):
            kernel.RyLayers.apply(state, theta, bad_perm, None)
    with pytest.raises(ValueError, match="sign must be None or a contiguous torch.float64"):
        kernel.RyLayers.apply(state, theta, perm, torch.ones(rows, 2**n, dtype=torch.float32))
    planes, eye = torch.rand(rows, 2, 2**n, dtype=torch.float64), torch.eye(2, dtype=torch.complex128).repeat(1, n, 1, 1)
    with pytest.raises(ValueError, match="perm must be"):
        kernel.ComplexLayers.apply(planes, eye, perm.long(), None)


def test_an_empty_cxx_means_the_default_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "")
    assert kernel.compiler() == "c++"
