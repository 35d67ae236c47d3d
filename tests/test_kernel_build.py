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
    monkeypatch.setattr(kernel, "_ready", None)
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
    # the library, the compiler's log and how it was built (OpenMP here)
    assert sorted(p.name for p in fresh.iterdir()) == sorted(
        [path.name, path.with_suffix(".log").name, path.with_suffix(".variant").name]
    )
    assert kernel.variant(path) == "OpenMP"


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


def test_a_loaded_kernel_still_follows_the_mode_on_every_call(monkeypatch):
    """`load` answers a step's many calls from a fast path once the library is loaded; a changed
    DIFFQAS_NATIVE_KERNEL still takes effect on the next call (torch: none; a bad value: the error)."""
    monkeypatch.delenv(kernel.ENV, raising=False)
    lib = kernel.load()
    if lib is None:
        from helpers import kernel_required

        assert not kernel_required()
        pytest.skip("no C++ kernel in this process")
    assert kernel.load() is lib and kernel.loaded() is lib
    monkeypatch.setenv(kernel.ENV, "torch")
    assert kernel.load() is None and kernel.loaded() is None
    monkeypatch.setenv(kernel.ENV, "fast")
    with pytest.raises(ValueError, match=f"{kernel.ENV}='fast' is not allowed"):
        kernel.load()
    monkeypatch.setenv(kernel.ENV, "cpp")
    assert kernel.load() is lib and kernel.loaded() is lib
    monkeypatch.setenv(kernel.ENV, "torch")
    assert kernel.loaded() is None


def test_the_fast_path_records_the_value_a_load_decided_under(monkeypatch):
    """A DIFFQAS_NATIVE_KERNEL changed while a `load` is under way does not become the value its
    fast path answers for (found by review: a reading taken at the end served torch the library)."""
    import threading

    monkeypatch.delenv(kernel.ENV, raising=False)
    lib = kernel.load()
    if lib is None:
        from helpers import kernel_required

        assert not kernel_required()
        pytest.skip("no C++ kernel in this process")
    monkeypatch.setattr(kernel, "_ready", None)  # the next load takes the slow path
    decided, seen = threading.Event(), []
    mode_of = kernel._mode_of
    monkeypatch.setattr(kernel, "_mode_of", lambda value: (decided.set(), mode_of(value))[1])
    with kernel._lock:  # the load below decides its mode, then waits here
        worker = threading.Thread(target=lambda: seen.append(kernel.load()))
        worker.start()
        assert decided.wait(DEADLINE)
        monkeypatch.setenv(kernel.ENV, "torch")
    worker.join(DEADLINE)
    assert seen == [lib]  # decided under "auto"
    assert kernel.load() is None and kernel.loaded() is None


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


def test_the_layers_read_their_input_and_saved_state_without_writing_them_and_zero_layers_are_the_identity(
    monkeypatch,
):
    """The forwards read the start state and the backwards the final state and its gradient in
    place (no copies first): the start state, the output and a caller's incoming gradient come out
    unchanged, a second backward through a kept graph gives the same gradients (the saved final
    state was not written), and a call with no layer returns its input and passes its gradient
    through (as the copies did). Also the WHT's input."""
    import torch
    from helpers import load_kernel_or_skip

    load_kernel_or_skip(monkeypatch)
    rows = 2
    # 5: the backwards' first pass is the low chunks; 13: one high bit (its pass is first and last); 15: three
    for n, dtype, layer_counts in ((5, torch.float64, (0, 2)), (13, torch.float64, (0, 2)), (15, torch.float32, (3,))):
        gen = torch.Generator().manual_seed(n)
        perm = torch.arange(2**n, dtype=torch.int32).flip(0).repeat(rows, 1).contiguous()
        for layers in layer_counts:
            real = torch.rand(rows, 2**n, generator=gen, dtype=torch.float64).to(dtype)
            split = torch.rand(rows, 2, 2**n, generator=gen, dtype=torch.float64).to(dtype)
            theta = torch.rand(layers, n, dtype=torch.float64, generator=gen).to(dtype).requires_grad_()
            u = torch.linalg.qr(torch.randn(layers, n, 2, 2, dtype=torch.complex128, generator=gen))[0]
            u = u.to(torch.complex64) if dtype == torch.float32 else u
            calls = {
                "ry": (real, kernel.RyLayers, (theta, perm, None)),
                "complex": (split, kernel.ComplexLayers, (u, perm, None)),
                "yz": (split, kernel.YZLayers, (theta, theta, None, perm, None)),
            }
            for name, (start, layers_of, args) in calls.items():
                state = start.clone().requires_grad_()
                out = layers_of.apply(state, *args)
                kept = out.detach().clone()
                incoming = torch.rand(out.shape, generator=gen, dtype=torch.float64).to(dtype)
                held = incoming.clone()
                out.backward(incoming, retain_graph=True)
                first, state.grad = state.grad.clone(), None
                out.backward(incoming)
                case = (name, n, dtype, layers)
                assert torch.equal(state.detach(), start) and torch.equal(out.detach(), kept), case
                assert torch.equal(incoming, held) and torch.equal(state.grad, first), case
                if layers == 0:
                    assert torch.equal(out.detach(), start) and torch.equal(first, incoming), case
        x = torch.rand(3, 2**n, generator=gen, dtype=torch.float64).to(dtype)
        held = x.clone()
        y = kernel.WHT.apply(x)
        assert torch.equal(x, held), n
        back = kernel.WHT.apply(y) / 2**n  # H H = 2**n: the transform, not a copy
        torch.testing.assert_close(back, held, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_the_build_id_names_the_library_loaded_not_what_the_source_and_cxx_would_name_now(monkeypatch):
    """summary.json's kernel_build: the file this process loaded. Another $CXX after the load (or an
    edit of kernel.cpp) names another library, but the arithmetic that ran is the loaded one's."""
    from helpers import load_kernel_or_skip

    load_kernel_or_skip(monkeypatch)
    loaded = kernel.build_id()
    assert kernel.library_path().name == f"diffqas_kernel_{loaded}.so"
    monkeypatch.setenv("CXX", "a-compiler-installed-after-the-load")
    assert kernel.library_path().name != f"diffqas_kernel_{loaded}.so"  # the name now would differ
    assert kernel.build_id() == loaded and kernel.in_use() == "cpp"


def test_an_empty_cxx_means_the_default_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "")
    assert kernel.compiler() == "c++"


# --- compilers without OpenMP, remembered failures, the CPU in the cache key (issue 37) ----------
def _fake_compiler(tmp_path, name: str, body: str):
    """A $CXX that logs its arguments (one line a call) to tmp_path/<name>.calls, then does `body`."""
    calls = tmp_path / f"{name}.calls"
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n{body}\n')
    script.chmod(0o755)
    return str(script), calls


def _calls(path) -> list[str]:
    """The compiler's builds (its `--version`, asked for the cache key, aside)."""
    return [c for c in path.read_text().splitlines() if c != "--version"] if path.exists() else []


REFUSES_OPENMP = (
    'for a in "$@"; do [ "$a" = "-fopenmp" ] && { echo "error: unsupported option -fopenmp" >&2; exit 1; }; done\nexec c++ "$@"'
)


def test_a_compiler_without_openmp_still_builds_the_kernel_and_says_so(fresh, monkeypatch, tmp_path, caplog):
    _compiler_or_skip()
    import torch

    cxx, calls = _fake_compiler(tmp_path, "apple-clang", REFUSES_OPENMP)
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.setenv(kernel.ENV, "cpp")
    with caplog.at_level(logging.INFO, logger="diffqas_runner"):
        assert kernel.load() is not None
    made = _calls(calls)
    assert len(made) == 2 and "-fopenmp" in made[0].split() and "-fopenmp-simd" in made[1].split()
    assert kernel.variant(kernel.library_path()) == "no OpenMP (-fopenmp-simd)"
    assert kernel.in_use() == "cpp (no OpenMP (-fopenmp-simd))"
    # the kernel built so computes what the pure-torch layers compute
    from diffqas_runner.quantum import CANDIDATES, probabilities

    theta = torch.rand(3, 6, dtype=torch.float64) * 6.3
    on_kernel = probabilities(theta, [CANDIDATES[7]])
    monkeypatch.setattr(kernel, "_module", None)
    monkeypatch.setenv(kernel.ENV, "torch")
    torch.testing.assert_close(on_kernel, probabilities(theta, [CANDIDATES[7]]), rtol=0, atol=1e-12)
    # a later process finds it and says once how it was built
    monkeypatch.setenv(kernel.ENV, "auto")
    monkeypatch.setattr(kernel, "_tried", False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="diffqas_runner"):
        assert kernel.load() is not None
    assert "built with no OpenMP (-fopenmp-simd)" in caplog.text and len(_calls(calls)) == 2


def test_a_failed_build_is_remembered_not_retried_by_every_run(fresh, monkeypatch, tmp_path, caplog):
    cxx, calls = _fake_compiler(tmp_path, "broken", 'echo "error: nothing works" >&2; exit 1')
    monkeypatch.setenv("CXX", cxx)
    path = kernel.library_path()
    assert kernel.load() is None  # auto: a background build, every variant fails
    _wait_until(lambda: not path.with_suffix(".building").exists())
    assert kernel.failure_marker(path).exists() and not path.exists()
    assert len(_calls(calls)) == len(kernel.VARIANTS)
    assert "nothing works" in path.with_suffix(".log").read_text()
    for _ in range(2):  # later processes: no compiler call, one line saying why
        monkeypatch.setattr(kernel, "_tried", False)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="diffqas_runner"):
            assert kernel.load() is None
        assert len(_calls(calls)) == len(kernel.VARIANTS)
        assert [r.message for r in caplog.records if "did not build" in r.message] and "pure torch" in caplog.text
    # another compiler is another library (and another marker): tried again
    other, other_calls = _fake_compiler(tmp_path, "broken2", "exit 1")
    monkeypatch.setenv("CXX", other)
    monkeypatch.setattr(kernel, "_tried", False)
    assert kernel.library_path() != path and kernel.load() is None
    _wait_until(lambda: not kernel.library_path().with_suffix(".building").exists())
    assert len(_calls(other_calls)) == len(kernel.VARIANTS)
    # DIFFQAS_NATIVE_KERNEL=cpp tries again, now, and says why it failed
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.setenv(kernel.ENV, "cpp")
    monkeypatch.setattr(kernel, "_tried", False)
    with pytest.raises(RuntimeError, match="nothing works"):
        kernel.load()
    assert len(_calls(calls)) == 2 * len(kernel.VARIANTS)


X86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2 fma\n" * 2
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n"


def test_the_cache_key_names_the_cpu_on_x86_aarch64_and_macos(fresh, monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(kernel, "CPUINFO", info)
    paths = {}
    for name, text in (("x86", X86), ("arm-v1", ARM), ("arm-n1", ARM.replace("0xd40", "0xd0c"))):
        info.write_text(text)
        ident = kernel.cpu_identity()
        assert ident and ident.count("\n") < 8  # one line per key, not one per core
        assert kernel.NATIVE in kernel.base_flags()
        paths[name] = kernel.library_path()
    assert len(set(paths.values())) == 3  # another CPU part (Neoverse V1 / N1) is another library
    assert "CPU part" in ident and "Features" in ident
    # macOS: no /proc, the CPU from sysctl
    info.unlink()
    monkeypatch.setattr(kernel.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(kernel, "_sysctl", {"machdep.cpu.brand_string": "Apple M2", "hw.cpufamily": "3660830781"}.get)
    assert "Apple M2" in kernel.cpu_identity() and kernel.NATIVE in kernel.base_flags()
    mac = kernel.library_path()
    # nothing identifies the CPU: a portable build (no -march=native), under a name of its own
    monkeypatch.setattr(kernel, "_sysctl", lambda name: None)
    assert kernel.cpu_identity() is None and kernel.NATIVE not in kernel.base_flags()
    assert kernel.library_path() not in {mac, *paths.values()}
    assert kernel.NATIVE not in kernel._command(tmp_path / "k.cpp", tmp_path / "k.so")


@pytest.mark.slow
def test_the_kernel_tests_pass_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    """kernel.cpp built with -fsanitize=address,undefined (GCC), the kernel's tests run against it in
    a child process: an out-of-bounds access or undefined behaviour aborts it."""
    import shutil

    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++ with sanitizers on PATH")
    libs = [subprocess.run([gxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
            for lib in ("libasan.so", "libstdc++.so")]  # fmt: skip
    if not all(os.path.isabs(lib) for lib in libs):
        pytest.skip("libasan not installed")
    env = {
        **os.environ, "DIFFQAS_CACHE_DIR": str(tmp_path / "cache"), kernel.ENV: "cpp", "ASAN_OPTIONS": "detect_leaks=0",
        "CXX": f"{gxx} -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer",
        "LD_PRELOAD": " ".join(libs),  # the Python binary is not instrumented: the runtime first
    }  # fmt: skip
    tests = [str(kernel.Path(__file__).with_name(t)) for t in ("test_quantum_fast.py", "test_reference.py", "test_controlled.py")]
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-s", "-p", "no:cacheprovider", "-m", "not slow", *tests],
                         env=env, capture_output=True, text=True, timeout=3000)  # fmt: skip
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    assert list((tmp_path / "cache").glob("*.so"))  # the sanitized library was built and used


@pytest.mark.slow
def test_the_backwards_lane_shuffles_and_the_one_pass_per_bit_build_agree(tmp_path, monkeypatch):
    """kernel.cpp's bits 0-2 in the backward take four-lane shuffles (clang's and GCC 12's
    __builtin_shufflevector, or older GCC's __builtin_shuffle) or, where a compiler has neither, one
    pass per bit. Each build the compiler has (three with GCC, two with clang, which lacks
    __builtin_shuffle): the same probabilities bit for bit (the forward does not use them), and the
    same angles' gradients up to the order of their sums, at sizes with and without the high-bit
    tiles, float64 and float32."""
    import torch
    from helpers import load_kernel_or_skip

    from diffqas_runner.quantum import native
    from diffqas_runner.quantum.candidates import CANDIDATES

    default = load_kernel_or_skip(monkeypatch)
    gnu = "clang" not in kernel.compiler_identity(kernel.compiler()).lower()  # __builtin_shuffle is GCC's only
    flags = ["-DDIFFQAS_NO_LANES"] + (["-DDIFFQAS_GNU_SHUFFLE"] if gnu else [])
    libs = {"default": default}
    for flag in flags:
        out = tmp_path / f"k{flag}.so"
        res = subprocess.run(kernel._command(kernel.SOURCE, out, (*kernel.OPENMP, flag)), capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        libs[flag] = kernel._open(out)
    for n, layers in ((3, 2), (9, 3), (14, 2)):
        ry = tuple(c for c in CANDIDATES if native._mode(c, n, layers) == "ry")  # the rows on ry_forward/ry_backward
        assert len(ry) >= 2
        for dtype in (torch.float64, torch.float32):
            gen = torch.Generator().manual_seed(n)
            theta0 = (torch.rand(layers, n, generator=gen, dtype=torch.float64) * 4 * torch.pi - 2 * torch.pi).to(dtype)
            coeffs = torch.randn(len(ry), 2**n, generator=gen, dtype=dtype)
            out = {}
            for name, lib in libs.items():
                monkeypatch.setattr(kernel, "load", lambda lib=lib: lib)
                theta = theta0.clone().requires_grad_()
                probs = native._kernel_group(theta, ry, "ry")
                (coeffs * probs).sum().backward()
                out[name] = probs.detach(), theta.grad
            p, g = out["default"]
            assert g.abs().max() > 1e-3
            for name in flags:
                assert torch.equal(out[name][0], p), (name, n, dtype)
                tol = 1e-12 if dtype == torch.float64 else 2e-5
                torch.testing.assert_close(out[name][1], g, rtol=0, atol=tol * g.abs().max().item(), msg=f"{name} {n} {dtype}")
