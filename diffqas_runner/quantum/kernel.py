"""Fused C++ layer kernels with adjoint backwards (kernel.cpp); pure torch is the fallback.

kernel.cpp is plain C++ behind a C interface (no torch or Python headers): it compiles in about
2 s with the system's C++ compiler ($CXX, default c++) and loads with ctypes, whatever the torch
version. The shared library is cached under $DIFFQAS_CACHE_DIR (default
$XDG_CACHE_HOME/diffqas_runner, else ~/.cache/diffqas_runner); its name carries a digest of the
source, the compiler flags and this CPU (it is built with -march=native), so a stale or foreign
build is never reused.

A run never waits for the compiler. DIFFQAS_NATIVE_KERNEL selects:
- auto (default): use the cached library if it is there. If not, start one build in the
  background (a detached process: it outlives this run, later runs use it) and simulate this
  whole process on the pure-torch path. The choice is made once per process, so a run never
  switches arithmetic halfway; the two paths agree to rounding (tests/test_quantum_fast.py).
- cpp: build now if needed and wait for it; a failed build is an error (tests, benchmarks,
  `python -m diffqas_runner.quantum.kernel` to build ahead, e.g. in a cluster image).
- torch: never use the kernel.
`check_environment` validates the variable (a run calls it through config.validate).

What the kernels compute, per row (one candidate's state vector, qubit 0 the most significant
bit) and per layer l: x <- sign * x[perm] (the entangling layer, signs from CZ gates), then one
rotation on every wire: Ry(theta[l, q]) on real rows (`RyLayers`), Rz Ry Rz with either Rz
absent on complex rows (`YZLayers`: RyRz, RzRy, Rot; the Ry on both planes, the Rz of a layer as
one diagonal phase), any 2x2 matrix u[l, q] on complex rows (`ComplexLayers`: Rz, RxRy, ...).
- Forward: for each chunk of 2**12 amplitudes, gather it through the permutation and apply the
  rotations of the 12 low bits while it sits in L1; then the rotations of the high bits on
  column tiles of the state seen as a (2**(n-12), 2**12) matrix. Two passes over memory per
  layer instead of one per wire.
- Backward (adjoint): only the final state is kept. Walking the layers in reverse, it applies
  each rotation's inverse to the state and to its gradient together, and the inverse signed
  permutation. All rotations of a layer commute (they act on different wires), so each one can be
  taken as the layer's last: its input is the state un-rotated on that wire and its output
  gradient is the current gradient. For Ry, dRy(t)/dt = Ry(t) J / 2 with J = [[0, -1], [1, 0]]
  commuting with every Ry gives dL/dtheta[l, q] = <g, J_q psi> / 2, read off during the
  un-rotation; for a general u, dL/du = sum g_out conj(z_in)^T (torch's convention for complex
  tensors), and torch's autograd takes it on to the angles.
- `map_forward`, `map_backward`: not a circuit, the QT generator's classical front half
  (post-processing, input norm, Linear mapping, centring) and its gradient, for qt/fused.py.
- `WHT`: the unnormalised Walsh-Hadamard transform of rows (the IQP closed form's two
  transforms), butterflies in the same two passes; its backward is the same transform (H is
  symmetric).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

ENV = "DIFFQAS_NATIVE_KERNEL"
MODES = ("auto", "torch", "cpp")
ABI = 12  # diffqas_abi_version() of kernel.cpp
SOURCE = Path(__file__).with_name("kernel.cpp")
FLAGS = ("-std=c++20", "-O3", "-march=native", "-fopenmp", "-fPIC", "-shared")  # where the CPU is known and OpenMP works
NATIVE = "-march=native"  # only where this CPU is identified (the cache key names it): else a portable build
# A compiler that refuses -fopenmp (Apple clang) still builds the kernel: with OpenMP's SIMD
# pragmas only, else plain; its calls then run on one thread. Tried in this order, the first that
# compiles is kept; which one is written beside the library (`.variant`).
OPENMP = ("-fopenmp",)
VARIANTS = (("OpenMP", OPENMP), ("no OpenMP (-fopenmp-simd)", ("-fopenmp-simd",)), ("no OpenMP", ()),
            ("no OpenMP, no -march=native", ("-march=",)))  # last: a compiler that refuses -march=native too  # fmt: skip
CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo keys that identify a CPU's instruction set: x86 ('model name', 'flags') and aarch64
# Linux ('Features', 'CPU implementer', 'CPU part', ...), where the x86 keys do not exist
CPU_KEYS = ("vendor_id", "model name", "flags", "Features", "CPU implementer", "CPU architecture", "CPU variant",
            "CPU part", "CPU revision")  # fmt: skip
LOW, TILE = 12, 64  # kernel.cpp's chunk bits and tile width (scratch sizes below)
NOT_YET = "the C++ kernel is not built yet"


class NotBuiltYet(RuntimeError):
    """This process has no kernel because none was built yet (not because a build failed)."""


STALE_SECONDS = 600  # a background build's lock older than this is abandoned

_lock = threading.Lock()
_module = None
_path: Path | None = None  # the file _module was loaded from (its name is the build: `build_id`)
_tried = False
_error: Exception | None = None  # why this process has no kernel (a failed build, or none yet)
# (the DIFFQAS_NATIVE_KERNEL value,) under which `load` last returned _module: a training step calls
# `load` a dozen times, and re-reading the mode and taking the lock each time was 2% of a step
_ready: tuple[str | None] | None = None


def _refusal(value: str | None) -> str | None:
    """None if `value`, a reading of $DIFFQAS_NATIVE_KERNEL, is unset or allowed, else a one-line
    message naming the variable, its value and what is allowed."""
    if value is None or value.strip().lower() in ("", *MODES):
        return None
    return f"{ENV}={value!r} is not allowed; allowed: {', '.join(MODES)} (or unset: auto)"


def check_environment() -> str | None:
    """`_refusal` of $DIFFQAS_NATIVE_KERNEL now (a run calls this before any work)."""
    return _refusal(os.environ.get(ENV))


def _mode_of(value: str | None) -> str:
    """The kernel mode one reading of $DIFFQAS_NATIVE_KERNEL asks for (None: unset)."""
    message = _refusal(value)
    if message:
        raise ValueError(message)
    return (value or "auto").strip().lower() or "auto"


def mode() -> str:
    return _mode_of(os.environ.get(ENV))


def compiler() -> str:
    return os.environ.get("CXX") or "c++"  # an empty $CXX is unset


def cache_dir() -> Path:
    if os.environ.get("DIFFQAS_CACHE_DIR"):
        return Path(os.environ["DIFFQAS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffqas_runner"


def cpu_identity() -> str | None:
    """What identifies this CPU's instruction set, for the cache key of a -march=native build: the
    identifying lines of /proc/cpuinfo (x86 and aarch64 Linux), else macOS's sysctl brand string
    and CPU family; None where nothing identifies it (the kernel is then built without -march=native,
    so a shared cache never hands one CPU a library built for another)."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    lines = sorted({line.strip() for line in text.splitlines() if line.split(":", 1)[0].strip() in CPU_KEYS})
    if lines:
        return "\n".join(lines)
    if platform.system() == "Darwin":
        values = [_sysctl(name) for name in ("machdep.cpu.brand_string", "hw.cpufamily", "hw.cpusubfamily")]
        if values[0] or values[1]:
            return "\n".join(v or "" for v in values)
    return None


def _sysctl(name: str) -> str | None:
    try:
        res = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def base_flags() -> tuple[str, ...]:
    """The compiler flags but OpenMP's: -march=native only where the CPU is identified."""
    native = cpu_identity() is not None
    return tuple(f for f in FLAGS if f not in OPENMP and (native or f != NATIVE))


def _source_and_path() -> tuple[str, Path]:
    """kernel.cpp's text and where its library is cached: the source, flags, compiler name and
    this CPU's identity (`cpu_identity`) are in its name, so a file there is current. A build
    compiles this text (a copy), never the file read again later, so the name always matches what
    was built."""
    cpu = platform.machine() + (cpu_identity() or " (unidentified: portable build)")
    source = SOURCE.read_text()
    variants = " ".join(f for _, v in VARIANTS for f in v)
    text = cpu + source + " ".join(base_flags()) + variants + compiler() + compiler_identity(compiler())
    return source, cache_dir() / f"diffqas_kernel_{hashlib.sha256(text.encode()).hexdigest()[:12]}.so"


def library_path() -> Path:
    return _source_and_path()[1]


def _command(source: Path, out: Path, extra: tuple[str, ...] = OPENMP) -> list[str]:
    """The compiler call for one variant; the extra flag "-march=" means: without -march=native."""
    flags = [f for f in base_flags() if not ("-march=" in extra and f == NATIVE)]
    return [*shlex.split(compiler()), *flags, *(f for f in extra if f != "-march="), str(source), "-o", str(out)]


@functools.lru_cache(maxsize=8)
def compiler_identity(cxx: str) -> str:
    """The first line of `$CXX --version` (empty when it does not answer): part of the cache key,
    so upgrading the compiler under the same name builds anew, and retries a build that failed."""
    try:
        res = subprocess.run([*shlex.split(cxx), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError, ValueError):
        return ""
    return (res.stdout or res.stderr).strip().splitlines()[0] if res.returncode == 0 and (res.stdout or res.stderr) else ""


def failure_marker(path: Path) -> Path:
    """Beside a library that did not build: why (the compiler's last words). Auto mode does not try
    again while it is there; its name carries the source, flags and compiler, so a change of any
    of them tries again, and so do DIFFQAS_NATIVE_KERNEL=cpp and deleting it."""
    return path.with_suffix(".failed")


def variant(path: Path) -> str:
    """How the cached library was built: one of VARIANTS' names ('OpenMP' when not recorded)."""
    try:
        return path.with_suffix(".variant").read_text().strip() or VARIANTS[0][0]
    except OSError:
        return VARIANTS[0][0]


def build() -> Path:
    """Compile kernel.cpp now (about 2 s) into the cache, trying VARIANTS in order; returns the
    library's path. The file appears atomically (written elsewhere, then renamed), so a reader
    never sees half of it. When no variant compiles, the failure is remembered and raised."""
    text, path = _source_and_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        source, out = Path(tmp) / "kernel.cpp", Path(tmp) / path.name
        source.write_text(text)
        for name, extra in VARIANTS:
            res = subprocess.run(_command(source, out, extra), capture_output=True, text=True)
            if res.returncode == 0:
                path.with_suffix(".variant").write_text(name)
                os.replace(out, path)
                failure_marker(path).unlink(missing_ok=True)
                return path
            errors.append(f"{' '.join(_command(source, out, extra))} failed:\n{res.stderr.strip()[-2000:]}")
    message = "\n".join(errors)
    failure_marker(path).write_text(message)
    raise RuntimeError(message)


def build_in_background() -> bool:
    """Start one detached build for later runs unless one is under way (a lock file younger than
    STALE_SECONDS) or an earlier one failed (`failure_marker`); False when there is no compiler or
    the cache is not writable. The build tries VARIANTS in order, like `build`."""
    if shutil.which(shlex.split(compiler())[0]) is None:
        return False
    text, path = _source_and_path()
    lock = path.with_suffix(".building")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if lock.exists() and time.time() - lock.stat().st_mtime < STALE_SECONDS:
            return True
        lock.unlink(missing_ok=True)
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:  # another process started the build a moment ago
            return True
    except OSError:
        return False
    try:  # from here on the lock is ours: it goes with the build, or right away if none starts
        tmp, source = path.with_suffix(f".{os.getpid()}.tmp"), path.with_suffix(f".{os.getpid()}.cpp")
        source.write_text(text)
        q = shlex.quote
        done = f"rm -f {q(str(tmp))} {q(str(source))} {q(str(lock))}"
        attempts = [
            f"( {shlex.join(_command(source, tmp, extra))} && printf %s {q(name)} > {q(str(path.with_suffix('.variant')))}"
            f" && mv -f {q(str(tmp))} {q(str(path))} )"
            for name, extra in VARIANTS
        ]
        failed = f"echo 'no variant compiled: see {path.with_suffix('.log').name}' > {q(str(failure_marker(path)))}"
        script = " || ".join([*attempts, failed]) + f"; {done}"
        with open(path.with_suffix(".log"), "w") as logfile:  # the compiler's messages, if any
            # `( ... ) &`: the shell returns at once and the build, orphaned, outlives this process
            # (no zombie, no unwaited child)
            subprocess.run(
                ["sh", "-c", f"( {script} ) &"],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                check=True,
            )
    except (OSError, subprocess.SubprocessError):
        for leftover in (lock, path.with_suffix(f".{os.getpid()}.cpp")):
            leftover.unlink(missing_ok=True)
        return False
    return True


def _open(path: Path):
    lib = ctypes.CDLL(str(path))
    if lib.diffqas_abi_version() != ABI:
        raise RuntimeError(f"{path} has ABI {lib.diffqas_abi_version()}, expected {ABI}")
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    signatures = {
        # the forwards read their input (first) and never write it; ry_backward reads psi_in and g_in (first)
        "ry_forward": [p, p, p, p, i64, p, p, i64, i64, i64, i32],  # in, a, b, theta, ..., rows, n, group, threads
        "ry_backward": [p, p, p, p, p, p, p, p, p, i64, p, p, i64, i64, i64, i32],
        "cx_forward": [p, p, p, p, i64, p, p, i64, i64, i32],  # in, a, b, u, ..., rows, n, threads
        "cx_backward": [p, p, p, p, p, p, p, p, p, i64, p, p, i64, i64, i32],  # psi_in, g_in, psi, g, ...
        "yz_forward": [p, p, p, p, p, p, i64, p, p, i64, i64, i32],  # in, a, b, theta, pre, post, layers, ...
        "yz_backward": [p, p, p, p, p, p, p, p, p, p, p, i64, p, p, i64, i64, i32],
        "ctrl_forward": [p, p, p, i64, i64, i64, i32],  # x, u, pairs, npairs, rows, n, threads
        "ctrl_backward": [p, p, p, p, p, p, i64, i64, i64, i32],
        "wht": [p, p, i64, i64, i32],  # in (never written), out, rows, n, threads
        "qtmap_forward": [p, p, p, p, p, p, i64, i64, i64, p, i32],  # u, z, a, kappa, w, stats, p, n, flags, params
        "qtmap_backward": [p, p, p, p, p, p, p, i64, i64, i64, p, i32],  # g, z, a, w, stats, du, dw, p, n, flags, params
        "lstm_forward": [p] * 10 + [i64] * 4 + [i32],  # x, wih, whh, bias, hw, hb, pred, acts, cs, hs, B, T, I, H
        "lstm_backward": [p] * 14 + [i64] * 4 + [i32],  # gp, x, wih, whh, hw, acts, cs, hs, dx, dwih, ..., dhb, B, T, I, H
        # start, fixed, theta, layers, perm, sign, n, w, params, p, flags, x, y, B, T, I, H, pred, dtheta, dw
        "qt_lstm_step": [p, p, p, i64, p, p, i64, p, p, i64, i64, p, p, i64, i64, i64, i64, p, p, p, i32],
        # fixed, fixed_at, S, start, perm, sign, ry_at, R, index, cf_at, C, theta, layers, n, structural, N, softmax,
        # w, params, p, flags, x, y, B, T, I, H, pred, dtheta, dstruct, dw
        "qt_mix_lstm_step": [p, p, i64, p, p, p, p, i64, p, p, i64, p, i64, i64, p, i64, i64, p, p, i64, i64, p, p]
        + [i64, i64, i64, i64, p, p, p, p, i32],
    }
    for name, argtypes in signatures.items():
        for suffix in ("f64", "f32"):
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, (None if name.startswith("ctrl") else i32)
    return lib


def load():
    """The loaded library, or None (this process runs on pure torch). Decided once per process:
    see the module docstring for the modes. With DIFFQAS_NATIVE_KERNEL=cpp a failed build
    raises, on this call and every later one."""
    global _module, _path, _tried, _error, _ready
    raw = os.environ.get(ENV)  # read once: the fast path records the value this call decided under
    if _settled(raw):
        return _module
    current = _mode_of(raw)
    if current == "torch":
        return None
    with _lock:
        if _module is None and (not _tried or (current == "cpp" and not _failed_build())):
            _tried = True
            path = library_path()
            try:
                if path.is_file():
                    try:
                        _module, _path, _error = _open(path), path, None
                    except OSError as err:  # e.g. a shared cache built where a library this node lacks exists
                        log.warning("the cached C++ kernel %s does not load here (%s); this run uses pure torch", path, err)
                        raise
                    if variant(path) != VARIANTS[0][0]:
                        log.info(
                            "the C++ kernel was built with %s (the compiler refused -fopenmp): one thread per call", variant(path)
                        )
                elif current == "cpp":
                    log.info("building the native simulator's C++ kernel (about 2 s, once per machine)")
                    built = build()
                    _module, _path, _error = _open(built), built, None
                elif failure_marker(path).exists():  # tried before with this source, flags and compiler
                    _error = RuntimeError(f"the C++ kernel did not build with {compiler()} (see {path.with_suffix('.log')})")
                    log.info(
                        "the C++ kernel did not build with %s earlier (%s): this run uses pure torch; "
                        "DIFFQAS_NATIVE_KERNEL=cpp tries again and shows why", compiler(), path.with_suffix(".log"),
                    )  # fmt: skip
                else:
                    started = build_in_background()
                    _error = NotBuiltYet(NOT_YET + (": building it in the background" if started else ""))
                    if started:
                        log.info("building the native simulator's C++ kernel in the background; this run uses pure torch")
            except Exception as err:  # no compiler, a failed build: the torch path takes over
                _module, _error = None, err
    if _module is None and current == "cpp":
        raise RuntimeError(f"{ENV}=cpp but the C++ kernel did not build: {_error!r}") from _error
    _ready = (raw,) if _module is not None else None
    return _module


def in_use() -> str | None:
    """How this process simulates on the C++ kernel: None when it loaded none (asks nothing, builds
    nothing), else 'cpp', or 'cpp (no OpenMP...)' for a library built without OpenMP."""
    if _module is None:
        return None
    built = variant(_path or library_path())
    return "cpp" if built == VARIANTS[0][0] else f"cpp ({built})"


def build_id() -> str | None:
    """Which build of kernel.cpp this process loaded (the 12 hex digits of its cache name: the source,
    flags, compiler and CPU), or None when it loaded none: the file it loaded, not what kernel.cpp
    and $CXX would name now (an edit or another compiler after the load changes that name). Within
    one version a change to kernel.cpp can move results at rounding level; summary.json records
    this, so two results say whether the same arithmetic made them."""
    if _module is None:
        return None
    return (_path or library_path()).stem.removeprefix("diffqas_kernel_")


def loaded():
    """The library this process loaded, or None (also under DIFFQAS_NATIVE_KERNEL=torch): asks
    nothing, builds nothing (the simulator's first call decides, `load`); qt/fused.py runs the
    generator's classical part on it only then."""
    raw = os.environ.get(ENV)
    return _module if _settled(raw) else (None if _mode_of(raw) == "torch" else _module)


def _settled(raw: str | None) -> bool:
    """Whether `load` already returned the library under this reading of the variable (the fast path)."""
    return _module is not None and _ready == (raw,)


def _failed_build() -> bool:
    """Whether this process's error is a build that failed (not merely 'not built yet')."""
    return not isinstance(_error, NotBuiltYet)


_DTYPES = {torch.float64: "f64", torch.float32: "f32"}  # the kernel's element types


def _call(name: str, dtype: torch.dtype, *args) -> int:
    """Call kernel.cpp's `name` for dtype with tensors passed as data pointers (None: a null one)
    and torch's thread count last."""
    fn = getattr(load(), f"{name}_{_DTYPES[dtype]}")
    ptrs = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]  # ints: ctypes makes the void*
    return fn(*ptrs, torch.get_num_threads())


def _check_inputs(state: torch.Tensor, perm: torch.Tensor, sign: torch.Tensor | None, rows: int, dim: int) -> None:
    """What kernel.cpp reads through raw pointers must be what it assumes: CPU, contiguous, perm
    int32 (rows, 2**n), sign None or (rows, 2**n) in the state's dtype."""
    if state.device.type != "cpu" or state.dtype not in (torch.float64, torch.float32):
        raise ValueError(f"the kernel takes float64 or float32 CPU states, got {state.dtype} on {state.device}")
    if perm.dtype != torch.int32 or tuple(perm.shape) != (rows, dim) or not perm.is_contiguous():
        raise ValueError(f"perm must be a contiguous int32 ({rows}, {dim}) tensor, got {perm.dtype} {tuple(perm.shape)}")
    if sign is not None and (sign.dtype != state.dtype or tuple(sign.shape) != (rows, dim) or not sign.is_contiguous()):
        raise ValueError(f"sign must be None or a contiguous {state.dtype} ({rows}, {dim}) tensor")


def _jobs(rows: int, n: int) -> int:
    """kernel.cpp's max(jobs_low, jobs_high): the scratch rows of per-job partial sums."""
    low = min(n, LOW)
    return rows * max(2**n >> low, (1 << low) // min(TILE, 1 << low))


class RyLayers(torch.autograd.Function):
    """Layers of real Ry rows: state (rows, 2**n) after the first layer (or the start state),
    theta (layers, n), perm (rows, 2**n) int32, sign (rows, 2**n) or None -> (rows, 2**n).
    group: rows come in blocks of `group` whose perm indexes the whole block (group * 2**n
    amplitudes): 2 for Rx rows kept as (real, imaginary) pairs (native._rx_pairs)."""

    @staticmethod
    def forward(ctx, state, theta, perm, sign=None, group=1):
        rows, dim = state.shape
        _check_inputs(state, perm, sign, rows, dim)
        start = state.detach().contiguous()  # read, never written: the kernel's first layer reads it
        a, b = torch.empty_like(start), torch.empty_like(start)
        th = theta.detach().to(torch.float64).contiguous()
        which = _call("ry_forward", state.dtype, start, a, b, th, th.shape[0], perm, sign, rows, dim.bit_length() - 1, group)
        final = b if which else a
        ctx.save_for_backward(final, theta, perm, sign)
        ctx.group = group
        return final

    @staticmethod
    @once_differentiable  # the adjoint backward is not itself differentiable: say so, not zeros
    def backward(ctx, grad):
        final, theta, perm, sign = ctx.saved_tensors
        rows, dim = final.shape
        n = dim.bit_length() - 1
        grad = grad.contiguous()  # final and grad are read, never written (no copies of them)
        psi, g, psi2, g2 = (torch.empty_like(final) for _ in range(4))
        part = torch.zeros(_jobs(rows, n) * n, dtype=torch.float64)
        th = theta.detach().to(torch.float64).contiguous()
        dtheta = torch.zeros(th.shape, dtype=torch.float64)
        args = (final, grad, psi, g, psi2, g2, part, dtheta, th, th.shape[0], perm, sign, rows, n, ctx.group)
        which = _call("ry_backward", final.dtype, *args)
        return (g2 if which else g), dtheta.to(theta.dtype), None, None, None


MAP_POST = {"none": 0, "scale": 1, "toolkit": 2}  # kernel.cpp's qtmap flags
MAP_ODD, MAP_STD, MAP_CENTER, MAP_PM1 = 4, 8, 16, 32


def map_args(weight: torch.Tensor, toolkit, bias: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What qtmap_* read of the mapping: its weight (1, n+1) flat in float64, and the params
    (gamma, beta, alpha, bias) in float64."""
    return weight.detach().reshape(-1).to(torch.float64).contiguous(), torch.tensor([*toolkit, bias], dtype=torch.float64)


def map_forward(u: torch.Tensor, weight: torch.Tensor, bias: float, p: int, n: int, flags: int, toolkit) -> tuple:
    """kernel.cpp's qtmap_forward on the first p entries of u (CPU, float32 or float64): (z, a,
    kappa, stats), see qt/fused.py; the mapping's weight (1, n+1) and bias are read in float64."""
    u = u.detach().contiguous()
    z, a, kappa = (torch.empty(p, dtype=u.dtype) for _ in range(3))
    stats = torch.empty(2, dtype=torch.float64)
    w, params = map_args(weight, toolkit, bias)
    _call("qtmap_forward", u.dtype, u, z, a, kappa, w, stats, p, n, flags, params)
    return z, a, kappa, stats


def map_backward(g, z, a, weight, stats, n: int, flags: int, toolkit) -> tuple[torch.Tensor, torch.Tensor]:
    """kernel.cpp's qtmap_backward: (du (p,), dw (n + 2,) float64: the weight's n + 1 entries, then the bias)."""
    g = g.to(z.dtype).contiguous()
    du = torch.empty_like(z)
    dw = torch.empty(n + 2, dtype=torch.float64)
    w, params = map_args(weight, toolkit, 0.0)
    _call("qtmap_backward", z.dtype, g, z, a, w, stats, du, dw, z.shape[0], n, flags, params)
    return du, dw


class LSTMRegression(torch.autograd.Function):
    """nets.LSTMRegressor's forward in one call of kernel.cpp each way: x (B, T, I), the LSTM's
    weight_ih (4H, I), weight_hh (4H, H) and bias (4H) (torch's gate order, no second bias), the
    head's weight (1, H) and bias (1) -> predictions (B, 1). All of one dtype (float32 or float64),
    on the CPU; the sums run in float64, on one thread."""

    @staticmethod
    def forward(ctx, keep, x, wih, whh, bias, hw, hb):
        """keep: whether a backward may follow (grad mode on and some input requiring grad)."""
        batch, steps, inputs = x.shape
        hidden = whh.shape[1]
        x, wih, whh, bias, hw, hb = (t.detach().contiguous() for t in (x, wih, whh, bias, hw, hb))
        pred = torch.empty(batch, 1, dtype=x.dtype)
        acts = torch.empty(steps, batch, 4 * hidden, dtype=x.dtype) if keep else None
        cs, hs = (torch.empty(steps + 1, batch, hidden, dtype=x.dtype) for _ in range(2)) if keep else (None, None)
        _call("lstm_forward", x.dtype, x, wih, whh, bias, hw, hb, pred, acts, cs, hs, batch, steps, inputs, hidden)
        if keep:
            ctx.save_for_backward(x, wih, whh, hw, acts, cs, hs)
        return pred

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, wih, whh, hw, acts, cs, hs = ctx.saved_tensors
        batch, steps, inputs = x.shape
        hidden = whh.shape[1]
        dx = torch.empty_like(x) if ctx.needs_input_grad[1] else None
        dwih, dwhh, dhw = torch.empty_like(wih), torch.empty_like(whh), torch.empty_like(hw)
        dbias, dhb = torch.empty(4 * hidden, dtype=x.dtype), torch.empty(1, dtype=x.dtype)
        gp = grad.to(x.dtype).contiguous()
        args = (gp, x, wih, whh, hw, acts, cs, hs, dx, dwih, dwhh, dbias, dhw, dhb, batch, steps, inputs, hidden)
        _call("lstm_backward", x.dtype, *args)
        return None, dx, dwih, dwhh, dbias, dhw, dhb


def lstm_regression(x, wih, whh, bias, hw, hb) -> torch.Tensor:
    """`LSTMRegression` (its arguments), keeping the states for a backward only where one can follow."""
    tensors = (x, wih, whh, bias, hw, hb)
    if not lstm_takes(*tensors):  # the kernel reads every pointer as x's dtype, on the CPU
        kinds = sorted({f"{t.dtype} on {t.device}" for t in tensors})
        raise ValueError(f"the C++ LSTM takes CPU float32 or float64 tensors of one dtype, with the kernel loaded; got {kinds}")
    hidden = whh.shape[-1]
    shapes = [tuple(t.shape) for t in tensors]
    if x.dim() != 3 or shapes[1:] != [(4 * hidden, x.shape[2]), (4 * hidden, hidden), (4 * hidden,), (1, hidden), (1,)]:
        raise ValueError(f"the LSTM's shapes must be x (B, T, I), (4H, I), (4H, H), (4H,), (1, H), (1,); got {shapes}")
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return LSTMRegression.apply(keep, *tensors)


def lstm_takes(*tensors: torch.Tensor) -> bool:
    """Whether `LSTMRegression` can run these: the library loaded in this process, every tensor
    on the CPU in one dtype the kernel has."""
    dtype = tensors[0].dtype
    return loaded() is not None and dtype in _DTYPES and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)


class WHT(torch.autograd.Function):
    """The unnormalised Walsh-Hadamard transform of the rows of x (rows, 2**n), float32 or float64
    on the CPU: one autograd node (closed_form.wht runs it as a few GEMMs on pure torch)."""

    @staticmethod
    def forward(ctx, x):
        if x.dim() != 2 or x.shape[1] < 1 or x.shape[1] & (x.shape[1] - 1) or x.device.type != "cpu" or x.dtype not in _DTYPES:
            raise ValueError(
                f"WHT takes CPU float32 or float64 rows of 2**n values, got {x.dtype} {tuple(x.shape)} on {x.device}"
            )
        rows, dim = x.shape
        x = x.detach().contiguous()
        out = torch.empty_like(x)
        _call("wht", out.dtype, x, out, rows, dim.bit_length() - 1)
        return out

    @staticmethod
    def backward(ctx, grad):
        return WHT.apply(grad)  # H is symmetric; through apply, so the backward is differentiable too


class ComplexLayers(torch.autograd.Function):
    """Layers of complex rows in split planes: state (rows, 2, 2**n) real (real parts, then
    imaginary parts), u (layers, n, 2, 2) complex (one matrix per wire), perm (rows, 2**n) int32,
    sign (rows, 2**n) real or None -> (rows, 2, 2**n)."""

    @staticmethod
    def forward(ctx, state, u, perm, sign=None):
        rows, _, dim = state.shape
        _check_inputs(state, perm, sign, rows, dim)
        start = state.detach().contiguous()  # read, never written
        a, b = torch.empty_like(start), torch.empty_like(start)
        u64 = torch.view_as_real(u.detach().to(torch.complex128)).contiguous()
        which = _call("cx_forward", state.dtype, start, a, b, u64, u64.shape[0], perm, sign, rows, dim.bit_length() - 1)
        final = b if which else a
        ctx.save_for_backward(final, u, perm, sign)
        return final

    @staticmethod
    @once_differentiable  # the adjoint backward is not itself differentiable: say so, not zeros
    def backward(ctx, grad):
        final, u, perm, sign = ctx.saved_tensors
        rows, _, dim = final.shape
        n = dim.bit_length() - 1
        grad = grad.contiguous()  # final and grad are read, never written (no copies of them)
        psi, g, psi2, g2 = (torch.empty_like(final) for _ in range(4))
        part = torch.zeros(_jobs(rows, n) * n * 8, dtype=torch.float64)
        u64 = torch.view_as_real(u.detach().to(torch.complex128)).contiguous()
        du = torch.zeros(u64.shape, dtype=torch.float64)
        args = (final, grad, psi, g, psi2, g2, part, du, u64, u64.shape[0], perm, sign, rows, n)
        which = _call("cx_backward", final.dtype, *args)
        return (g2 if which else g), torch.view_as_complex(du).to(u.dtype), None, None


class YZLayers(torch.autograd.Function):
    """Layers of complex rows in split planes whose rotation is Ry between Z rotations (RyRz, RzRy,
    Rot): state (rows, 2, 2**n) real, theta (layers, n) the Ry angles, pre and post (layers, n) the
    Z angles before and after the Ry (either None), perm (rows, 2**n) int32, sign (rows, 2**n) or
    None -> (rows, 2, 2**n). The same layers as ComplexLayers with u = Rz(post) Ry(theta) Rz(pre),
    at about the cost of two real Ry rows: kernel.cpp applies each layer's Z rotations as one
    diagonal phase per amplitude. Angles' gradients come straight from the kernel (adjoint)."""

    @staticmethod
    def forward(ctx, state, theta, pre, post, perm, sign=None):
        rows, planes, dim = state.shape
        _check_inputs(state, perm, sign, rows, dim)
        n = dim.bit_length() - 1
        if planes != 2 or theta.dim() != 2 or theta.shape[1] != n:
            raise ValueError(
                f"YZLayers takes (rows, 2, 2**n) states and (layers, n) angles, got {tuple(state.shape)}, {tuple(theta.shape)}"
            )
        if any(z is not None and z.shape != theta.shape for z in (pre, post)):
            raise ValueError(f"pre and post must be None or shaped like theta {tuple(theta.shape)}")
        start = state.detach().contiguous()  # read, never written
        a, b = torch.empty_like(start), torch.empty_like(start)
        th, zs = _angles(theta), [None if z is None else _angles(z) for z in (pre, post)]
        which = _call("yz_forward", state.dtype, start, a, b, th, *zs, th.shape[0], perm, sign, rows, n)
        final = b if which else a
        ctx.save_for_backward(final, theta, perm, sign, *(z for z in (pre, post) if z is not None))
        ctx.has = (pre is not None, post is not None)
        return final

    @staticmethod
    @once_differentiable  # the adjoint backward is not itself differentiable: say so, not zeros
    def backward(ctx, grad):
        final, theta, perm, sign, *zs = ctx.saved_tensors
        pre = zs.pop(0) if ctx.has[0] else None
        post = zs.pop(0) if ctx.has[1] else None
        rows, _, dim = final.shape
        n = dim.bit_length() - 1
        psi, g = final.clone(), grad.contiguous().clone()
        psi2, g2 = torch.empty_like(psi), torch.empty_like(g)
        part = torch.zeros(_jobs(rows, n) * 3 * n, dtype=torch.float64)
        th = _angles(theta)
        z64 = [None if z is None else _angles(z) for z in (pre, post)]
        grads = [torch.zeros(th.shape, dtype=torch.float64) if z is not None else None for z in (th, *z64)]
        args = (psi, g, psi2, g2, part, *grads, th, *z64, th.shape[0], perm, sign, rows, n)
        which = _call("yz_backward", final.dtype, *args)
        dtheta, dpre, dpost = (None if d is None else d.to(theta.dtype) for d in grads)
        return (g2 if which else g), dtheta, dpre, dpost, None, None


def _angles(t: torch.Tensor) -> torch.Tensor:
    """Angles as kernel.cpp reads them: contiguous float64, detached."""
    return t.detach().to(torch.float64).contiguous()


class ControlledLayer(torch.autograd.Function):
    """One layer of controlled 2x2 gates on complex rows in split planes: state (rows, 2, 2**n)
    real, u (pairs, 2, 2) complex (the same for every row; pair j: u[j] on its target where its
    control is 1), pairs (pairs, 2) int32 (control, target) in application order. The backward is
    the adjoint method: it un-applies each gate (u^H) to recover its input, so nothing but the
    output is kept."""

    @staticmethod
    def forward(ctx, state, u, pairs):
        if state.device.type != "cpu" or state.dtype not in (torch.float64, torch.float32) or state.dim() != 3:
            raise ValueError(
                f"the kernel takes (rows, 2, 2**n) float64 or float32 CPU states, got {state.dtype} {tuple(state.shape)}"
            )
        rows, planes, dim = state.shape
        n = dim.bit_length() - 1
        if planes != 2 or dim != 2**n or n < 2:
            raise ValueError(f"the kernel takes (rows, 2, 2**n) states with n >= 2, got {tuple(state.shape)}")
        if pairs.dtype != torch.int32 or tuple(pairs.shape) != (u.shape[0], 2) or not pairs.is_contiguous():
            raise ValueError(f"pairs must be a contiguous int32 ({u.shape[0]}, 2) tensor, got {pairs.dtype} {tuple(pairs.shape)}")
        if len(pairs) and (int(pairs.min()) < 0 or int(pairs.max()) >= n or bool((pairs[:, 0] == pairs[:, 1]).any())):
            raise ValueError(f"pairs must name two different wires in 0..{n - 1}")
        out = state.detach().contiguous().clone()
        u64 = torch.view_as_real(u.detach().to(torch.complex128)).contiguous()
        _call("ctrl_forward", state.dtype, out, u64, pairs, len(pairs), rows, n)
        ctx.save_for_backward(out, u, pairs)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        out, u, pairs = ctx.saved_tensors
        rows, _, dim = out.shape
        n = dim.bit_length() - 1
        psi, lam = out.clone(), grad.contiguous().clone()
        part = torch.zeros(rows * max(1, dim >> 14) * 8, dtype=torch.float64)
        u64 = torch.view_as_real(u.detach().to(torch.complex128)).contiguous()
        du = torch.zeros(u64.shape, dtype=torch.float64)
        _call("ctrl_backward", out.dtype, psi, lam, part, du, u64, pairs, len(pairs), rows, n)
        return lam, torch.view_as_complex(du).to(u.dtype), None


if __name__ == "__main__":  # build ahead of time: python -m diffqas_runner.quantum.kernel
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    print(f"{build()} ({time.perf_counter() - started:.1f} s)")
