"""Fused C++ kernel for the real (Ry) layers, with an adjoint backward; pure torch is the fallback.

Built with torch.utils.cpp_extension.load_inline on first use and cached by torch (under
$TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions). It needs a C++ compiler and ninja;
if either is missing or the build fails, `load()` returns None and the simulator silently
uses its pure-torch path. DIFFQAS_NATIVE_KERNEL=torch forces the pure-torch path; =cpp makes
a failed build an error instead (for tests and benchmarks), also when an earlier call in auto
mode already failed; the default is auto. `check_environment` validates the variable (a run
calls it through config.validate before any work).

What it computes, per row (one candidate's real state vector, qubit 0 the most significant
bit) and per layer l: x <- x[perm] (the CNOT layer), then Ry(theta[l, q]) on every wire.
- Forward: for each chunk of 2**12 amplitudes, gather it through the permutation and apply the
  rotations of the 12 low bits while it sits in L1; then the rotations of the high bits on
  column tiles of the state seen as a (2**(n-12), 2**12) matrix. Two passes over memory per
  layer instead of one per wire.
- Backward (adjoint): only the final state is kept. Walking the layers in reverse, it applies
  each rotation's transpose to the state and to its gradient together, and the inverse
  permutation. The angle gradient needs no stored state: all rotations of a layer commute, and
  dRy(t)/dt = Ry(t) J / 2 with J = [[0, -1], [1, 0]] commuting with every Ry, so
  dL/dtheta[l, q] = <g, J_q psi> / 2 on the layer's output (g its gradient), and that product
  is unchanged by the orthogonal un-rotations of the same layer, so it is read off during them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading

import torch

log = logging.getLogger(__name__)

ENV = "DIFFQAS_NATIVE_KERNEL"
MODES = ("auto", "torch", "cpp")

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int LOW = 12;     // bits rotated per in-cache chunk
constexpr int64_t TILE = 64; // columns per high-bit tile

// One bit's rotation over a chunk; ST = the bit's stride when known at compile time (small
// strides: the compiler then vectorises across groups instead of a 1-, 2- or 4-long loop).
template <typename T, int ST>
inline void rotate_bit(T* x, int64_t size, int64_t st_rt, T cc, T ss) {
  const int64_t st = ST > 0 ? ST : st_rt;
  for (int64_t base = 0; base < size; base += 2 * st) {
    T* lo = x + base;
    T* hi = lo + st;
#pragma omp simd
    for (int64_t k = 0; k < st; ++k) {
      const T a = lo[k], d = hi[k];
      lo[k] = cc * a - ss * d;
      hi[k] = ss * a + cc * d;
    }
  }
}

// Rotations of the low `bits` bits of one contiguous chunk. c[b], s[b]: bit position b.
template <typename T>
inline void rotate_low(T* x, int bits, const T* c, const T* s) {
  const int64_t size = int64_t(1) << bits;
  for (int b = 0; b < bits; ++b) {
    const int64_t st = int64_t(1) << b;
    if (b == 0) rotate_bit<T, 1>(x, size, st, c[b], s[b]);
    else if (b == 1) rotate_bit<T, 2>(x, size, st, c[b], s[b]);
    else if (b == 2) rotate_bit<T, 4>(x, size, st, c[b], s[b]);
    else rotate_bit<T, 0>(x, size, st, c[b], s[b]);
  }
}

// Un-rotate n amplitude pairs (lo[k], hi[k]) and their gradients (glo[k], ghi[k]) by one angle;
// returns this span's share of the angle's gradient, sum_k ghi[k] lo[k] - glo[k] hi[k].
template <typename T>
inline T unrotate_span(T* lo, T* hi, T* glo, T* ghi, int64_t n, T cc, T ss) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) {
    const T a = lo[k], d = hi[k], ga = glo[k], gd = ghi[k];
    acc += gd * a - ga * d;
    lo[k] = cc * a + ss * d;
    hi[k] = cc * d - ss * a;
    glo[k] = cc * ga + ss * gd;
    ghi[k] = cc * gd - ss * ga;
  }
  return acc;
}

template <typename T, int ST>
inline double unrotate_bit(T* x, T* g, int64_t size, int64_t st_rt, T cc, T ss) {
  const int64_t st = ST > 0 ? ST : st_rt;  // a compile-time stride for the smallest bits
  double dot = 0;
  for (int64_t base = 0; base < size; base += 2 * st)
    dot += unrotate_span(x + base, x + base + st, g + base, g + base + st, st, cc, ss);
  return dot;
}

// Transposed rotations of the low bits on (psi, g), accumulating <g, J_b psi> per bit.
template <typename T>
inline void unrotate_low(T* x, T* g, int bits, const T* c, const T* s, double* dots) {
  const int64_t size = int64_t(1) << bits;
  for (int b = 0; b < bits; ++b) {
    const int64_t st = int64_t(1) << b;
    if (b == 0) dots[b] += unrotate_bit<T, 1>(x, g, size, st, c[b], s[b]);
    else if (b == 1) dots[b] += unrotate_bit<T, 2>(x, g, size, st, c[b], s[b]);
    else if (b == 2) dots[b] += unrotate_bit<T, 4>(x, g, size, st, c[b], s[b]);
    else dots[b] += unrotate_bit<T, 0>(x, g, size, st, c[b], s[b]);
  }
}

// High bits (positions LOW..n-1) on a tile of columns [col, col + width) of the
// (2**high, 2**low) matrix view. The tile's rows sit 2**low apart, a power-of-two stride that
// maps them all to the same cache sets, so the tile is copied to a contiguous buffer first.
template <typename T>
inline void rotate_high(T* x, int high, int low, int64_t col, int64_t width, const T* c, const T* s) {
  const int64_t rows = int64_t(1) << high, ld = int64_t(1) << low;
  thread_local std::vector<T> tile;
  tile.resize(rows * width);
  T* t = tile.data();
  for (int64_t r = 0; r < rows; ++r) std::copy(x + r * ld + col, x + r * ld + col + width, t + r * width);
  for (int h = 0; h < high; ++h) {
    const int64_t st = int64_t(1) << h;
    const T cc = c[low + h], ss = s[low + h];
    for (int64_t base = 0; base < rows; base += 2 * st)
      for (int64_t r = base; r < base + st; ++r) {
        T* lo = t + r * width;
        T* hi = t + (r + st) * width;
#pragma omp simd
        for (int64_t k = 0; k < width; ++k) {
          const T a = lo[k], d = hi[k];
          lo[k] = cc * a - ss * d;
          hi[k] = ss * a + cc * d;
        }
      }
  }
  for (int64_t r = 0; r < rows; ++r) std::copy(t + r * width, t + (r + 1) * width, x + r * ld + col);
}

template <typename T>
inline void unrotate_high(T* x, T* g, int high, int low, int64_t col, int64_t width, const T* c, const T* s,
                          double* dots) {
  const int64_t rows = int64_t(1) << high, ld = int64_t(1) << low;
  thread_local std::vector<T> tiles;
  tiles.resize(2 * rows * width);
  T* t = tiles.data();
  T* tg = t + rows * width;
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(x + r * ld + col, x + r * ld + col + width, t + r * width);
    std::copy(g + r * ld + col, g + r * ld + col + width, tg + r * width);
  }
  for (int h = 0; h < high; ++h) {
    const int64_t st = int64_t(1) << h;
    const T cc = c[low + h], ss = s[low + h];
    double dot = 0;
    for (int64_t base = 0; base < rows; base += 2 * st)
      for (int64_t r = base; r < base + st; ++r)
        dot += unrotate_span(t + r * width, t + (r + st) * width, tg + r * width, tg + (r + st) * width, width, cc, ss);
    dots[low + h] += dot;
  }
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(t + r * width, t + (r + 1) * width, x + r * ld + col);
    std::copy(tg + r * width, tg + (r + 1) * width, g + r * ld + col);
  }
}

// cos/sin of theta/2 per layer, indexed by bit position (bit b is wire n-1-b).
template <typename T>
std::vector<T> trig(const torch::Tensor& theta, bool sine) {
  auto th = theta.to(torch::kFloat64).contiguous();
  const int64_t layers = th.size(0), n = th.size(1);
  const double* t = th.data_ptr<double>();
  std::vector<T> out(layers * n);
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t b = 0; b < n; ++b) {
      const double half = t[l * n + (n - 1 - b)] / 2;
      out[l * n + b] = T(sine ? std::sin(half) : std::cos(half));
    }
  return out;
}

struct Shape {
  int64_t rows, n, dim, low, high, chunks, tiles, tile;
};

Shape shape_of(const torch::Tensor& state) {
  Shape sh;
  sh.rows = state.size(0);
  sh.dim = state.size(1);
  sh.n = 0;
  while ((int64_t(1) << sh.n) < sh.dim) ++sh.n;
  sh.low = std::min<int64_t>(sh.n, LOW);
  sh.high = sh.n - sh.low;
  sh.chunks = sh.dim >> sh.low;
  sh.tile = std::min<int64_t>(TILE, int64_t(1) << sh.low);
  sh.tiles = (int64_t(1) << sh.low) / sh.tile;
  return sh;
}

}  // namespace

// state (rows, 2**n) after the first layer; theta (L-1, n); perm (rows, 2**n) int32.
torch::Tensor forward(torch::Tensor state, torch::Tensor theta, torch::Tensor perm) {
  const Shape sh = shape_of(state);
  auto cur = state.contiguous().clone();
  auto nxt = torch::empty_like(cur);
  const int32_t* p = perm.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "ry_forward", [&] {
    using T = scalar_t;
    const auto cs = trig<T>(theta, false), sn = trig<T>(theta, true);
    for (int64_t l = 0; l < theta.size(0); ++l) {
      const T* c = cs.data() + l * sh.n; const T* s = sn.data() + l * sh.n;
      const T* in = cur.data_ptr<T>(); T* out = nxt.data_ptr<T>();
      at::parallel_for(0, sh.rows * sh.chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t job = begin; job < end; ++job) {
          const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
          const T* src = in + row * sh.dim;
          const int32_t* pr = p + row * sh.dim + start;
          T* dst = out + row * sh.dim + start;
          for (int64_t i = 0; i < (int64_t(1) << sh.low); ++i) dst[i] = src[pr[i]];
          rotate_low(dst, int(sh.low), c, s);
        }
      });
      if (sh.high > 0)
        at::parallel_for(0, sh.rows * sh.tiles, 1, [&](int64_t begin, int64_t end) {
          for (int64_t job = begin; job < end; ++job) {
            const int64_t row = job / sh.tiles, col = (job % sh.tiles) * sh.tile;
            rotate_high(out + row * sh.dim, int(sh.high), int(sh.low), col, sh.tile, c, s);
          }
        });
      std::swap(cur, nxt);
    }
  });
  return cur;
}

// final (rows, 2**n), grad (rows, 2**n) -> [grad of the input state, grad of theta (L-1, n)].
std::vector<torch::Tensor> backward(torch::Tensor final_state, torch::Tensor grad, torch::Tensor theta,
                                    torch::Tensor perm) {
  const Shape sh = shape_of(final_state);
  const int64_t layers = theta.size(0);
  auto psi = final_state.contiguous().clone(), g = grad.contiguous().clone();
  auto psi2 = torch::empty_like(psi), g2 = torch::empty_like(g);
  auto dtheta = torch::zeros({layers, sh.n}, theta.options().dtype(torch::kFloat64));
  double* dt = dtheta.data_ptr<double>();
  const int32_t* p = perm.data_ptr<int32_t>();
  const int64_t jobs_low = sh.rows * sh.chunks, jobs_high = sh.rows * sh.tiles;
  std::vector<double> part(std::max(jobs_low, jobs_high) * sh.n);
  AT_DISPATCH_FLOATING_TYPES(psi.scalar_type(), "ry_backward", [&] {
    using T = scalar_t;
    const auto cs = trig<T>(theta, false), sn = trig<T>(theta, true);
    for (int64_t l = layers - 1; l >= 0; --l) {
      const T* c = cs.data() + l * sh.n; const T* s = sn.data() + l * sh.n;
      std::fill(part.begin(), part.end(), 0.0);
      T* x = psi.data_ptr<T>(); T* gx = g.data_ptr<T>();
      if (sh.high > 0)
        at::parallel_for(0, jobs_high, 1, [&](int64_t begin, int64_t end) {
          for (int64_t job = begin; job < end; ++job) {
            const int64_t row = job / sh.tiles, col = (job % sh.tiles) * sh.tile;
            unrotate_high(x + row * sh.dim, gx + row * sh.dim, int(sh.high), int(sh.low), col, sh.tile, c, s,
                          part.data() + job * sh.n);
          }
        });
      T* xo = psi2.data_ptr<T>(); T* go = g2.data_ptr<T>();
      at::parallel_for(0, jobs_low, 1, [&](int64_t begin, int64_t end) {
        for (int64_t job = begin; job < end; ++job) {
          const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
          T* xs = x + row * sh.dim + start; T* gs = gx + row * sh.dim + start;
          // high-bit dots were written to part[job' * n + b] for b >= low, low-bit ones go here:
          // both index ranges of `part` are per job and are summed below.
          std::vector<double> dots(sh.low, 0.0);
          unrotate_low(xs, gs, int(sh.low), c, s, dots.data());
          for (int64_t b = 0; b < sh.low; ++b) part[job * sh.n + b] += dots[b];
          const int32_t* pr = p + row * sh.dim + start;
          T* xd = xo + row * sh.dim; T* gd = go + row * sh.dim;
          for (int64_t i = 0; i < (int64_t(1) << sh.low); ++i) {
            xd[pr[i]] = xs[i];
            gd[pr[i]] = gs[i];
          }
        }
      });
      for (int64_t job = 0; job < std::max(jobs_low, jobs_high); ++job)
        for (int64_t b = 0; b < sh.n; ++b) dt[l * sh.n + (sh.n - 1 - b)] += 0.5 * part[job * sh.n + b];
      std::swap(psi, psi2);
      std::swap(g, g2);
    }
  });
  return {g, dtheta.to(theta.scalar_type())};
}
"""

_lock = threading.Lock()
_module = None
_tried = False
_error: Exception | None = None  # why the one build attempt failed


def check_environment() -> str | None:
    """None if $DIFFQAS_NATIVE_KERNEL is unset or allowed, else a one-line message naming the
    variable, its value and what is allowed (a run calls this before any work)."""
    value = os.environ.get(ENV)
    if value is None or value.strip().lower() in ("", *MODES):
        return None
    return f"{ENV}={value!r} is not allowed; allowed: {', '.join(MODES)} (or unset: auto)"


def mode() -> str:
    message = check_environment()
    if message:
        raise ValueError(message)
    return os.environ.get(ENV, "auto").strip().lower() or "auto"


def _build_name() -> str:
    """The extension's name: it is compiled for this CPU (-march=native), so the CPU's model and
    flags and the source are in the name, and a cache shared with another CPU is never reused."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += "".join(line for line in f if line.startswith(("model name", "flags")))
    except OSError:
        pass
    digest = hashlib.sha256((cpu + _SOURCE + torch.__version__).encode()).hexdigest()[:12]
    return f"diffqas_ry_kernel_{digest}"


def load():
    """The compiled extension, or None (pure-torch fallback). Builds it once per process; with
    DIFFQAS_NATIVE_KERNEL=cpp a failed build raises, on this call and every later one."""
    global _module, _tried, _error
    if mode() == "torch":
        return None
    with _lock:
        if not _tried:
            _tried = True
            try:
                # its import logs a warning about CUDA on CPU-only machines: not ours to show
                logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
                from torch.utils import cpp_extension
                from torch.utils.cpp_extension import load_inline

                name = _build_name()  # source, CPU and torch version are in it: a built file is current
                build_dir = cpp_extension._get_build_directory(name, verbose=False)
                if os.path.isfile(os.path.join(build_dir, f"{name}.so")):  # skip ninja's ~1 s check
                    try:
                        _module = cpp_extension._import_module_from_library(name, build_dir, True)
                        return _module
                    except Exception:
                        pass
                log.info("building the native simulator's C++ kernel (first use: a minute or more; later runs reuse it)")
                _module = load_inline(
                    name=name,
                    cpp_sources=_SOURCE,
                    functions=["forward", "backward"],
                    extra_cflags=["-O3", "-march=native", "-fopenmp"],
                    extra_ldflags=["-fopenmp"],
                    verbose=False,
                )
            except Exception as err:  # no compiler, no ninja, a failed build: the torch path takes over
                _module, _error = None, err
    if _module is None and mode() == "cpp":
        raise RuntimeError(f"{ENV}=cpp but the C++ kernel did not build: {_error!r}") from _error
    return _module


class RyLayers(torch.autograd.Function):
    """All layers after the first of a batch of real Ry rows: (rows, 2**n) -> (rows, 2**n)."""

    @staticmethod
    def forward(ctx, state, theta, perm):
        module = load()
        final = module.forward(state, theta, perm)
        ctx.save_for_backward(final, theta, perm)
        return final

    @staticmethod
    def backward(ctx, grad):
        final, theta, perm = ctx.saved_tensors
        grad_state, grad_theta = load().backward(final, grad, theta, perm)
        return grad_state, grad_theta, None
