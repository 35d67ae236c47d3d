// The native simulator's fused layer kernels (see kernel.py for what they compute and why).
//
// Plain C++ with a C interface: no torch or Python headers, so it compiles in a few seconds
// with any C++20 compiler (kernel.py's flags) and does not depend on the torch version. kernel.py loads it with
// ctypes and hands it the data pointers of torch tensors.
//
// Layout: a batch of `rows` state vectors of 2**n amplitudes, qubit 0 the most significant bit
// (bit position b is wire n-1-b). Real rows (Ry layers) are (rows, 2**n); complex rows are split
// planes (rows, 2, 2**n): real parts, then imaginary parts. One layer is: x <- sign * x[perm]
// (the entangler: a signed permutation, sign optional), then one rotation on every wire.
//
// Work is split in two passes per layer: chunks of 2**LOW amplitudes are gathered through the
// permutation and rotated on their LOW low bits while they sit in L1; the high bits are rotated
// on column tiles of the (2**high, 2**LOW) matrix view in a contiguous buffer (the Ry and YZ rows
// read the state's rows on their first pass and write them on their last; the complex rows and
// the Walsh-Hadamard transform copy the tile in and out).
// Every job writes its own slice and its own partial sums, which are added in job order: the
// result does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numbers>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

constexpr int LOW = 12;       // bits rotated per in-cache chunk
constexpr int64_t TILE = 64;  // columns per high-bit tile

struct Shape {
  int64_t rows, n, dim, low, high, chunks, tiles, tile;
};

Shape shape_of(int64_t rows, int64_t n) {
  Shape sh;
  sh.rows = rows;
  sh.n = n;
  sh.dim = int64_t(1) << n;
  sh.low = std::min<int64_t>(n, LOW);
  sh.high = n - sh.low;
  sh.chunks = sh.dim >> sh.low;
  sh.tile = std::min<int64_t>(TILE, int64_t(1) << sh.low);
  sh.tiles = (int64_t(1) << sh.low) / sh.tile;
  return sh;
}

// The entangler's signed permutation on one chunk of `len` amplitudes, over P planes at once:
// gather (the forward) dst[p][i] = sg[i] * src[p][pr[i]]; scatter (its inverse, the backward)
// dst[p][pr[i]] = sg[i] * src[p][i]; pr and sg are the chunk's slices of perm and sign (sg null:
// no signs). `visit(i, j, v)` sees an amplitude's P values between reading and writing (j = pr[i],
// its source index): the YZ rows apply their phases there. Every kernel permutes through here.
struct Untouched {
  template <typename V>
  void operator()(int64_t, int64_t, V&) const {}
};

template <bool GATHER, bool SIGNED, int P, typename T, typename Visit>
inline void permute_loop(T* const* dst, const T* const* src, const int32_t* pr, const T* sg, int64_t len, Visit& visit) {
  for (int64_t i = 0; i < len; ++i) {
    const int64_t j = pr[i];
    T v[P];
    for (int p = 0; p < P; ++p) v[p] = GATHER ? src[p][j] : src[p][i];
    if (GATHER && SIGNED)
      for (int p = 0; p < P; ++p) v[p] *= sg[i];
    visit(i, j, v);
    if (!GATHER && SIGNED)
      for (int p = 0; p < P; ++p) v[p] *= sg[i];
    for (int p = 0; p < P; ++p) (GATHER ? dst[p][i] : dst[p][j]) = v[p];
  }
}

// The chunk is amplitudes at + [0, len) of perm's and sign's rows (sign null: no signs).
template <bool GATHER, int P, typename T, typename Visit = Untouched>
inline void permute_chunk(T* const* dst, const T* const* src, const int32_t* perm, const T* sign, int64_t at,
                          int64_t len, Visit visit = {}) {
  if (sign == nullptr) permute_loop<GATHER, false, P>(dst, src, perm + at, sign, len, visit);
  else permute_loop<GATHER, true, P>(dst, src, perm + at, sign + at, len, visit);
}

// ------------------------------------------------------------------------------------------
// Real rows: Ry(theta) = [[c, -s], [s, c]], c = cos(theta / 2), s = sin(theta / 2).

template <typename T, int ST>
inline void rotate_bit(T* x, int64_t size, int64_t st_rt, T cc, T ss) {
  const int64_t st = ST > 0 ? ST : st_rt;  // small strides known at compile time vectorise
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

// K consecutive bits in one pass (bits b .. b+K-1; st the stride of bit b): each amplitude is
// loaded once, the K rotations are applied in registers in ascending bit order (each amplitude
// sees the operations of one pass per bit, in their order: the same values, bit for bit on this
// project's machine in float64 and float32), and it is stored once. The passes are bound by loads
// and stores: three bits a pass take the 12 low bits from 2.5 to 1.55 ns an amplitude in float64
// (docs/benchmarks.md, issue 36 sixth part).
template <typename T, int K>
inline void rotate_bits(T* x, int64_t size, int64_t st, const T* c, const T* s) {
  for (int64_t base = 0; base < size; base += st << K) {
    T* p = x + base;
#pragma omp simd
    for (int64_t k = 0; k < st; ++k) {
      T v[1 << K];
      for (int j = 0; j < (1 << K); ++j) v[j] = p[j * st + k];
      for (int b = 0; b < K; ++b) {
        const int m = 1 << b;
        for (int j = 0; j < (1 << K); ++j)
          if (!(j & m)) {
            const T a = v[j], d = v[j | m];
            v[j] = c[b] * a - s[b] * d;
            v[j | m] = s[b] * a + c[b] * d;
          }
      }
      for (int j = 0; j < (1 << K); ++j) p[j * st + k] = v[j];
    }
  }
}

// bits [from, to) of x[0, size), bit b at stride unit << b, three at a time
template <typename T>
inline void rotate_bits_from(T* x, int64_t size, int64_t unit, int from, int to, const T* c, const T* s) {
  for (int b = from; b < to; b += 3) {
    const int64_t st = unit << b;
    if (to - b >= 3) rotate_bits<T, 3>(x, size, st, c + b, s + b);
    else if (to - b == 2) rotate_bits<T, 2>(x, size, st, c + b, s + b);
    else rotate_bits<T, 1>(x, size, st, c + b, s + b);
  }
}

// bit(ST, b) for each of the `bits` low bits, ST the stride 2**b as a compile-time constant for
// b < 3 (those strides vectorise only when known), else std::integral_constant<int, 0> (runtime).
template <typename Bit>
inline void each_low_bit(int bits, Bit bit) {
  for (int b = 0; b < bits; ++b) {
    if (b == 0) bit(std::integral_constant<int, 1>{}, b);
    else if (b == 1) bit(std::integral_constant<int, 2>{}, b);
    else if (b == 2) bit(std::integral_constant<int, 4>{}, b);
    else bit(std::integral_constant<int, 0>{}, b);
  }
}

// Bits 0-2 one pass each (their strides, known at compile time, vectorise within a pass), the rest
// three at a time.
template <typename T>
inline void rotate_low(T* x, int bits, const T* c, const T* s) {
  const int64_t size = int64_t(1) << bits;
  each_low_bit(std::min(bits, 3), [&](auto st, int b) { rotate_bit<T, st.value>(x, size, int64_t(1) << b, c[b], s[b]); });
  rotate_bits_from(x, size, 1, 3, bits, c, s);
}

// Un-rotate pairs (lo, hi) and their gradients by one angle, written to (olo, ohi, oglo, oghi) (the
// same places, in place); returns this span's share of the angle's gradient,
// sum_k ghi[k] lo[k] - glo[k] hi[k].
template <typename T>
inline T unrotate_span_to(const T* lo, const T* hi, const T* glo, const T* ghi, T* olo, T* ohi, T* oglo, T* oghi,
                          int64_t n, T cc, T ss) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) {
    const T a = lo[k], d = hi[k], ga = glo[k], gd = ghi[k];
    acc += gd * a - ga * d;
    olo[k] = cc * a + ss * d;
    ohi[k] = cc * d - ss * a;
    oglo[k] = cc * ga + ss * gd;
    oghi[k] = cc * gd - ss * ga;
  }
  return acc;
}

template <typename T>
inline T unrotate_span(T* lo, T* hi, T* glo, T* ghi, int64_t n, T cc, T ss) {
  return unrotate_span_to(lo, hi, glo, ghi, lo, hi, glo, ghi, n, cc, ss);
}

template <typename T, int ST>
inline double unrotate_bit(T* x, T* g, int64_t size, int64_t st_rt, T cc, T ss) {
  const int64_t st = ST > 0 ? ST : st_rt;
  double dot = 0;
  for (int64_t base = 0; base < size; base += 2 * st)
    dot += unrotate_span(x + base, x + base + st, g + base, g + base + st, st, cc, ss);
  return dot;
}

// Four lanes of T (GCC's and clang's vector extension: 256 bits in float64, 128 in float32), for
// the backward's bits 0-2, whose pairs sit next to each other: bits 0 and 1 pair lanes within one
// vector (a shuffle), bit 2 pairs two vectors. One pass per bit there runs spans of one, two and
// four pairs, each with its own reduction, and took 2.6-3.1 ns an amplitude for the three bits
// against 0.8-1.2 here (docs/benchmarks.md, issue 36 seventh part). The shuffle is clang's and
// GCC 12's __builtin_shufflevector or older GCC's __builtin_shuffle; a compiler with neither (or
// -DDIFFQAS_NO_LANES) runs one pass per bit. -DDIFFQAS_GNU_SHUFFLE takes GCC's older builtin (a
// test builds each variant the compiler has: three with GCC, two with clang).
#if !defined(DIFFQAS_NO_LANES) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector) && !defined(DIFFQAS_GNU_SHUFFLE)
#define DIFFQAS_LANES 1
#define DIFFQAS_SHUFFLE(v, a, b, c, d) __builtin_shufflevector(v, v, a, b, c, d)
#elif defined(__GNUC__) && !defined(__clang__)
#define DIFFQAS_LANES 1
#define DIFFQAS_SHUFFLE(v, a, b, c, d) __builtin_shuffle(v, mask_of<T>{a, b, c, d})
#endif
#endif

#ifdef DIFFQAS_LANES
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // without -march=native: the vectors' ABI note, about inline helpers
#endif
template <typename T>
struct Lanes {
  typedef T type __attribute__((vector_size(4 * sizeof(T))));
  typedef std::conditional_t<sizeof(T) == 8, int64_t, int32_t> index;
  typedef index mask __attribute__((vector_size(4 * sizeof(T))));
};
template <typename T>
using lanes = typename Lanes<T>::type;
template <typename T>
using mask_of = typename Lanes<T>::mask;
template <typename T>
inline lanes<T> load4(const T* p) {
  lanes<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void store4(T* p, lanes<T> v) {
  std::memcpy(p, &v, sizeof v);
}

// Bits 0-2 of x and g (a whole number of blocks of 8) un-rotated in one pass, bit 0 first: the same
// state and gradient values as one pass per bit, bit for bit (each lane computes its pair's
// expression as unrotate_span writes it); the angles' sums are added per lane in T over 64 blocks
// at most, the four lanes combined in T, then added in float64, so they differ from one pass per
// bit by rounding.
template <typename T>
inline void unrotate_low3(T* x, T* g, int64_t size, const T* c, const T* s, double* dots) {
  // bit 0 pairs lanes (0, 1) and (2, 3); bit 1 pairs (0, 2) and (1, 3): per lane, the partner's
  // coefficient is +s in the pair's low lane and -s in its high lane, and its share of the angle's
  // sum, g_hi x_lo - g_lo x_hi, is partner(g) * x in the low lane minus the same in the high lane
  const lanes<T> c0 = {c[0], c[0], c[0], c[0]}, s0 = {s[0], -s[0], s[0], -s[0]};
  const lanes<T> c1 = {c[1], c[1], c[1], c[1]}, s1 = {s[1], s[1], -s[1], -s[1]};
  const T cc = c[2], ss = s[2];
  constexpr int64_t FLUSH = 64 * 8;  // amplitudes per T-precision partial sum
  for (int64_t at = 0; at < size; at += FLUSH) {
    lanes<T> d0 = {}, d1 = {}, d2 = {};
    for (int64_t k = at; k < std::min(size, at + FLUSH); k += 8) {
      lanes<T> x0 = load4(x + k), x1 = load4(x + k + 4), g0 = load4(g + k), g1 = load4(g + k + 4);
      // one bit on one vector pair (x, g): its partners by the shuffle, the angle's share into d.
      // A macro, not a function: the shuffle's lanes must be constants, and the code must stay
      // exactly this (an inline helper changed GCC 12's float32 results elsewhere: rotate_tile_bits).
#define DIFFQAS_LANE_BIT(xv, gv, d, cv, sv, ...)                                             \
  {                                                                                          \
    const lanes<T> t = DIFFQAS_SHUFFLE(xv, __VA_ARGS__), u = DIFFQAS_SHUFFLE(gv, __VA_ARGS__); \
    d += u * xv;                                                                             \
    xv = cv * xv + sv * t;                                                                   \
    gv = cv * gv + sv * u;                                                                   \
  }
      DIFFQAS_LANE_BIT(x0, g0, d0, c0, s0, 1, 0, 3, 2)
      DIFFQAS_LANE_BIT(x1, g1, d0, c0, s0, 1, 0, 3, 2)
      DIFFQAS_LANE_BIT(x0, g0, d1, c1, s1, 2, 3, 0, 1)
      DIFFQAS_LANE_BIT(x1, g1, d1, c1, s1, 2, 3, 0, 1)
#undef DIFFQAS_LANE_BIT
      d2 += g1 * x0 - g0 * x1;
      store4(x + k, cc * x0 + ss * x1);
      store4(x + k + 4, cc * x1 - ss * x0);
      store4(g + k, cc * g0 + ss * g1);
      store4(g + k + 4, cc * g1 - ss * g0);
    }
    dots[0] += double((d0[0] - d0[1]) + (d0[2] - d0[3]));
    dots[1] += double((d1[0] - d1[2]) + (d1[1] - d1[3]));
    dots[2] += double((d2[0] + d2[1]) + (d2[2] + d2[3]));
  }
}
#endif

// K consecutive bits [b, b + K) of x and g (a whole number of blocks of 2**K strides st = 2**b) in
// one pass, bit b first: each amplitude and its gradient are loaded once and un-rotated in
// registers in the order of one pass per bit (unrotate_span's expressions: the same values, bit
// for bit). The angles' sums are added per column k of a block (at most 64 columns) in T, across 16
// blocks at most, then in float64: one pass per bit summed each span of st pairs across lanes
// and added it in float64, which cost more than the span's arithmetic where spans are short (st 8
// to 64: 8-16 scalar additions per span, docs/benchmarks.md, issue 36 ninth part).
template <typename T, int K>
inline void unrotate_bits(T* x, T* g, int64_t size, int64_t st, const T* c, const T* s, double* dots) {
  constexpr int64_t W = 64, FLUSH = 16;  // columns, and blocks per T-precision partial sum
  const int64_t w = std::min(st, W);
  T acc[K][W] = {};
  int64_t blocks = 0;
  auto flush = [&] {
    for (int q = 0; q < K; ++q) {
      double sum = 0;
      for (int64_t k = 0; k < w; ++k) sum += double(acc[q][k]), acc[q][k] = 0;
      dots[q] += sum;
    }
  };
  for (int64_t base = 0; base < size; base += st << K)
    for (int64_t k0 = 0; k0 < st; k0 += w) {
      T* p = x + base + k0;
      T* r = g + base + k0;
#pragma omp simd
      for (int64_t k = 0; k < w; ++k) {
        T v[1 << K], u[1 << K], d[K] = {};
#pragma GCC unroll 8
        for (int j = 0; j < (1 << K); ++j) v[j] = p[j * st + k], u[j] = r[j * st + k];
#pragma GCC unroll 3
        for (int q = 0; q < K; ++q) {
          const int m = 1 << q;
#pragma GCC unroll 8
          for (int j = 0; j < (1 << K); ++j)
            if (!(j & m)) {
              const T a = v[j], e = v[j | m], ga = u[j], ge = u[j | m];
              d[q] += ge * a - ga * e;
              v[j] = c[q] * a + s[q] * e;
              v[j | m] = c[q] * e - s[q] * a;
              u[j] = c[q] * ga + s[q] * ge;
              u[j | m] = c[q] * ge - s[q] * ga;
            }
        }
#pragma GCC unroll 8
        for (int j = 0; j < (1 << K); ++j) p[j * st + k] = v[j], r[j * st + k] = u[j];
#pragma GCC unroll 3
        for (int q = 0; q < K; ++q) acc[q][k] += d[q];
      }
      if (++blocks == FLUSH) flush(), blocks = 0;
    }
  if (blocks) flush();
}

// Bits 0-2 in one pass of four-lane vectors (one pass per bit without them), the rest three at a time.
template <typename T>
inline void unrotate_low(T* x, T* g, int bits, const T* c, const T* s, double* dots) {
  const int64_t size = int64_t(1) << bits;
#ifdef DIFFQAS_LANES
  if (bits >= 3) unrotate_low3(x, g, size, c, s, dots);
  else
#endif
    each_low_bit(std::min(bits, 3), [&](auto st, int b) {
      dots[b] += unrotate_bit<T, st.value>(x, g, size, int64_t(1) << b, c[b], s[b]);
    });
  for (int b = 3; b < bits; b += 3) {
    const int64_t st = int64_t(1) << b;
    if (bits - b >= 3) unrotate_bits<T, 3>(x, g, size, st, c + b, s + b, dots + b);
    else if (bits - b == 2) unrotate_bits<T, 2>(x, g, size, st, c + b, s + b, dots + b);
    else unrotate_bits<T, 1>(x, g, size, st, c + b, s + b, dots + b);
  }
}

// One column tile [col, col + width) of the (2**high, 2**low) view, copied to a buffer, then
// pair(h, lo, hi, width) on every pair of its rows that differ in high bit h (h ascending), and
// copied back.
template <typename T, typename Pair>
inline void on_high_tile(T* x, int high, int low, int64_t col, int64_t width, Pair pair) {
  const int64_t rows = int64_t(1) << high, ld = int64_t(1) << low;
  thread_local std::vector<T> tile;
  tile.resize(rows * width);
  T* t = tile.data();
  for (int64_t r = 0; r < rows; ++r) std::copy(x + r * ld + col, x + r * ld + col + width, t + r * width);
  for (int h = 0; h < high; ++h) {
    const int64_t st = int64_t(1) << h;
    for (int64_t base = 0; base < rows; base += 2 * st)
      for (int64_t r = base; r < base + st; ++r) pair(h, t + r * width, t + (r + st) * width, width);
  }
  for (int64_t r = 0; r < rows; ++r) std::copy(t + r * width, t + (r + 1) * width, x + r * ld + col);
}

// K high bits [b, b + K) of one column tile in one pass: rows base + o + j 2**b (j < 2**K) of
// `width` amplitudes, read through in(r) and written through out(r), the K rotations applied in
// registers in ascending bit order (as rotate_bits: the same operations per amplitude). The
// rotations are written out here and in rotate_bits on purpose: one shared inline helper for them
// changed GCC 12's float32 results of rotate_bits (tried, session 14), and both must stay bitwise.
template <typename T, int K, typename In, typename Out>
inline void rotate_tile_bits(int high, int b, int64_t width, const T* c, const T* s, In in, Out out) {
  const int64_t rows = int64_t(1) << high, st = int64_t(1) << b;
  for (int64_t base = 0; base < rows; base += st << K)
    for (int64_t o = 0; o < st; ++o) {
      const T* src[1 << K];
      T* dst[1 << K];
      for (int j = 0; j < (1 << K); ++j) src[j] = in(base + o + j * st), dst[j] = out(base + o + j * st);
#pragma omp simd
      for (int64_t k = 0; k < width; ++k) {
        T v[1 << K];
        for (int j = 0; j < (1 << K); ++j) v[j] = src[j][k];
        for (int q = 0; q < K; ++q) {
          const int m = 1 << q;
          for (int j = 0; j < (1 << K); ++j)
            if (!(j & m)) {
              const T a = v[j], d = v[j | m];
              v[j] = c[q] * a - s[q] * d;
              v[j | m] = s[q] * a + c[q] * d;
            }
        }
        for (int j = 0; j < (1 << K); ++j) dst[j][k] = v[j];
      }
    }
}

// The high bits of one column tile of the (2**high, 2**low) view, three at a time as in
// `rotate_low`: the first pass reads the state's rows and the last one writes them back, the passes
// between work on a contiguous copy (the rows sit 2**low apart, on one cache set), without copying
// the tile in and out around them (bitwise the same values).
template <typename T>
inline void rotate_high(T* x, int high, int low, int64_t col, int64_t width, const T* c, const T* s) {
  const int64_t rows = int64_t(1) << high, ld = int64_t(1) << low;
  thread_local std::vector<T> tile;
  tile.resize(rows * width);
  T* const t = tile.data();
  for (int b = 0; b < high; b += 3) {
    const int k = std::min(3, high - b);
    auto in = [&](int64_t r) -> const T* { return b == 0 ? x + r * ld + col : t + r * width; };
    auto out = [&](int64_t r) -> T* { return b + k == high ? x + r * ld + col : t + r * width; };
    const T* cb = c + low + b;
    const T* sb = s + low + b;
    if (k == 3) rotate_tile_bits<T, 3>(high, b, width, cb, sb, in, out);
    else if (k == 2) rotate_tile_bits<T, 2>(high, b, width, cb, sb, in, out);
    else rotate_tile_bits<T, 1>(high, b, width, cb, sb, in, out);
  }
}

// K high bits [b, b + K) of one column tile of the state and its gradient in one pass: rows base +
// o + j 2**b (j < 2**K) of `width` (<= 64) amplitudes, read through in(r) and written through
// out(r) (each a pair of pointers: state, gradient), un-rotated in registers in ascending bit order
// (unrotate_span's expressions: the same values as one pass per bit, bit for bit). The angles'
// sums are added per column in T over 16 groups of rows at most, then in float64 (as unrotate_bits).
// The un-rotation is written out here and in unrotate_bits on purpose: one shared inline helper
// for it (always_inline too) gave the same bits but GCC 12 no longer kept the columns in
// registers: the backward at (17, 15) took 2.7x as long in float64 and 4x in float32 (session 16).
template <typename T, int K, typename In, typename Out>
inline void unrotate_tile_bits(int high, int b, int64_t width, const T* c, const T* s, In in, Out out, double* dots) {
  constexpr int64_t W = 64, FLUSH = 16;
  const int64_t rows = int64_t(1) << high, st = int64_t(1) << b;
  T acc[K][W] = {};
  int64_t blocks = 0;
  auto flush = [&] {
    for (int q = 0; q < K; ++q) {
      double sum = 0;
      for (int64_t k = 0; k < width; ++k) sum += double(acc[q][k]), acc[q][k] = 0;
      dots[q] += sum;
    }
  };
  for (int64_t base = 0; base < rows; base += st << K)
    for (int64_t o = 0; o < st; ++o) {
      const T *xi[1 << K], *gi[1 << K];
      T *xo[1 << K], *go[1 << K];
      for (int j = 0; j < (1 << K); ++j) {
        const auto [xr, gr] = in(base + o + j * st);
        const auto [xw, gw] = out(base + o + j * st);
        xi[j] = xr, gi[j] = gr, xo[j] = xw, go[j] = gw;
      }
#pragma omp simd
      for (int64_t k = 0; k < width; ++k) {
        T v[1 << K], u[1 << K], d[K] = {};
#pragma GCC unroll 8
        for (int j = 0; j < (1 << K); ++j) v[j] = xi[j][k], u[j] = gi[j][k];
#pragma GCC unroll 3
        for (int q = 0; q < K; ++q) {
          const int m = 1 << q;
#pragma GCC unroll 8
          for (int j = 0; j < (1 << K); ++j)
            if (!(j & m)) {
              const T a = v[j], e = v[j | m], ga = u[j], ge = u[j | m];
              d[q] += ge * a - ga * e;
              v[j] = c[q] * a + s[q] * e;
              v[j | m] = c[q] * e - s[q] * a;
              u[j] = c[q] * ga + s[q] * ge;
              u[j | m] = c[q] * ge - s[q] * ga;
            }
        }
#pragma GCC unroll 8
        for (int j = 0; j < (1 << K); ++j) xo[j][k] = v[j], go[j][k] = u[j];
#pragma GCC unroll 3
        for (int q = 0; q < K; ++q) acc[q][k] += d[q];
      }
      if (++blocks == FLUSH) flush(), blocks = 0;
    }
  if (blocks) flush();
}

// The high bits of one column tile of the state and its gradient, three at a time (as
// `rotate_high`): the first pass reads the rows of xs and gs (x and g themselves, or where the
// backward's input lies, left unwritten) and the last one writes the rows of x and g, the passes
// between work on a contiguous copy (the rows sit 2**low apart, on one cache set).
template <typename T>
inline void unrotate_high(const T* xs, const T* gs, T* x, T* g, int high, int low, int64_t col, int64_t width,
                          const T* c, const T* s, double* dots) {
  const int64_t rows = int64_t(1) << high, ld = int64_t(1) << low;
  thread_local std::vector<T> tiles;
  tiles.resize(2 * rows * width);
  T* const t = tiles.data();
  T* const tg = t + rows * width;
  for (int b = 0; b < high; b += 3) {
    const int k = std::min(3, high - b);
    auto in = [&](int64_t r) {
      return b == 0 ? std::pair<const T*, const T*>{xs + r * ld + col, gs + r * ld + col}
                    : std::pair<const T*, const T*>{t + r * width, tg + r * width};
    };
    auto out = [&](int64_t r) {
      return b + k == high ? std::pair<T*, T*>{x + r * ld + col, g + r * ld + col}
                           : std::pair<T*, T*>{t + r * width, tg + r * width};
    };
    const T* cb = c + low + b;
    const T* sb = s + low + b;
    if (k == 3) unrotate_tile_bits<T, 3>(high, b, width, cb, sb, in, out, dots + low + b);
    else if (k == 2) unrotate_tile_bits<T, 2>(high, b, width, cb, sb, in, out, dots + low + b);
    else unrotate_tile_bits<T, 1>(high, b, width, cb, sb, in, out, dots + low + b);
  }
}

// The high bits' un-rotation of every row's `planes` planes (state and gradient), per column tile,
// read from xs and gs (x and gx, or the backward's unwritten input) and written to x and gx; each
// job's angle sums in part + job * stride (plane by plane).
template <typename T>
void unrotate_high_rows(const T* xs, const T* gs, T* x, T* gx, int planes, const Shape& sh, const T* c, const T* s,
                        double* part, int64_t stride, int threads) {
  if (sh.high == 0) return;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t job = 0; job < sh.rows * sh.tiles; ++job) {
    const int64_t row = job / sh.tiles, col = (job % sh.tiles) * sh.tile;
    for (int p = 0; p < planes; ++p)
      unrotate_high(xs + (planes * row + p) * sh.dim, gs + (planes * row + p) * sh.dim, x + (planes * row + p) * sh.dim,
                    gx + (planes * row + p) * sh.dim, int(sh.high), int(sh.low), col, sh.tile, c, s,
                    part + job * stride);
  }
}

// cos/sin of theta/2 per layer in bit order (bit b is wire n-1-b); theta (layers, n) float64.
template <typename T>
std::vector<T> trig(const double* theta, int64_t layers, int64_t n, bool sine) {
  std::vector<T> out(layers * n);
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t b = 0; b < n; ++b) {
      const double half = theta[l * n + (n - 1 - b)] / 2;
      out[l * n + b] = T(sine ? std::sin(half) : std::cos(half));
    }
  return out;
}

// Forward: `in` holds the input (rows, 2**n), read by the first layer only and never written (it
// may be a: callers that own a copy pass it twice); a and b are scratch. Returns 0 if the result
// is in a, 1 if in b.
// Rows come in blocks of `group` (1, or 2 for Rx rows kept as (real, imaginary) pairs): perm
// indexes the block's group * 2**n amplitudes, so a layer may move values between a block's rows.
template <typename T>
int ry_forward(const T* in, T* a, T* b, const double* theta, int64_t layers, const int32_t* perm, const T* sign,
               int64_t rows, int64_t n, int64_t group, int threads) {
  if (layers == 0) return std::copy(in, in + (rows << n), a), 0;  // no layer: the input itself
  const Shape sh = shape_of(rows, n);
  const auto cs = trig<T>(theta, layers, n, false), sn = trig<T>(theta, layers, n, true);
  T* cur = a;
  T* nxt = b;
  for (int64_t l = 0; l < layers; ++l) {
    const T* c = cs.data() + l * sh.n;
    const T* s = sn.data() + l * sh.n;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t job = 0; job < sh.rows * sh.chunks; ++job) {
      const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
      const T* src[1] = {(l == 0 ? in : cur) + (row / group) * group * sh.dim};
      T* dst[1] = {nxt + row * sh.dim + start};
      permute_chunk<true, 1>(dst, src, perm, sign, row * sh.dim + start, int64_t(1) << sh.low);
      rotate_low(dst[0], int(sh.low), c, s);
    }
    if (sh.high > 0) {
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int64_t job = 0; job < sh.rows * sh.tiles; ++job) {
        const int64_t row = job / sh.tiles, col = (job % sh.tiles) * sh.tile;
        rotate_high(nxt + row * sh.dim, int(sh.high), int(sh.low), col, sh.tile, c, s);
      }
    }
    std::swap(cur, nxt);
  }
  return cur == a ? 0 : 1;
}

// Backward (adjoint): psi_in holds the final state, g_in its gradient, read by the last layer's
// first pass only and never written (they may be psi and g: callers that own copies pass them
// twice); psi, g, psi2, g2 scratch; part (max(jobs) * n) float64 scratch; dtheta (layers, n)
// float64 output. Returns 0 if the input state's gradient is in g, 1 if in g2.
template <typename T>
int ry_backward(const T* psi_in, const T* g_in, T* psi, T* g, T* psi2, T* g2, double* part, double* dtheta,
                const double* theta, int64_t layers, const int32_t* perm, const T* sign, int64_t rows, int64_t n,
                int64_t group, int threads) {
  if (layers == 0) return std::copy(g_in, g_in + (rows << n), g), 0;  // no layer: the gradient itself
  const Shape sh = shape_of(rows, n);
  const int64_t jobs_low = sh.rows * sh.chunks, jobs_high = sh.rows * sh.tiles;
  const int64_t jobs = std::max(jobs_low, jobs_high);
  const auto cs = trig<T>(theta, layers, n, false), sn = trig<T>(theta, layers, n, true);
  T* x = psi;
  T* gx = g;
  T* xo = psi2;
  T* go = g2;
  for (int64_t l = layers - 1; l >= 0; --l) {
    const T* c = cs.data() + l * sh.n;
    const T* s = sn.data() + l * sh.n;
    std::fill(part, part + jobs * sh.n, 0.0);
    // the last layer reads the input; where no high bit's pass reads it, its low bits' pass copies it
    // (each only where it is not the buffer itself: the fused steps pass their gradient buffer twice)
    const bool copy_x = l == layers - 1 && sh.high == 0 && psi_in != psi;
    const bool copy_g = l == layers - 1 && sh.high == 0 && g_in != g;
    unrotate_high_rows(l == layers - 1 ? psi_in : x, l == layers - 1 ? g_in : gx, x, gx, 1, sh, c, s, part, sh.n,
                       threads);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t job = 0; job < jobs_low; ++job) {
      const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
      T* xs = x + row * sh.dim + start;
      T* gs = gx + row * sh.dim + start;
      const int64_t at = row * sh.dim + start, len = int64_t(1) << sh.low;
      if (copy_x) std::copy(psi_in + at, psi_in + at + len, xs);
      if (copy_g) std::copy(g_in + at, g_in + at + len, gs);
      std::vector<double> dots(sh.low, 0.0);
      unrotate_low(xs, gs, int(sh.low), c, s, dots.data());
      for (int64_t b = 0; b < sh.low; ++b) part[job * sh.n + b] += dots[b];
      // perm is a bijection of the block: no two jobs write one place
      T* dst[2] = {xo + (row / group) * group * sh.dim, go + (row / group) * group * sh.dim};
      const T* src[2] = {xs, gs};
      permute_chunk<false, 2>(dst, src, perm, sign, row * sh.dim + start, int64_t(1) << sh.low);
    }
    for (int64_t job = 0; job < jobs; ++job)
      for (int64_t b = 0; b < sh.n; ++b) dtheta[l * sh.n + (sh.n - 1 - b)] += 0.5 * part[job * sh.n + b];
    std::swap(x, xo);
    std::swap(gx, go);
  }
  return gx == g ? 0 : 1;
}

// ------------------------------------------------------------------------------------------
// Complex rows (split planes) under one 2x2 complex matrix per (layer, wire):
// u = (u00r, u00i, u01r, u01i, u10r, u10i, u11r, u11i), (lo, hi) <- (u00 lo + u01 hi, u10 lo + u11 hi).
// The backward un-applies u^H to the state and to its gradient and accumulates the gradient of
// u in torch's convention for complex tensors: dL/du[a][b] = sum g_out[a] * conj(z_in[b]).

struct U {
  double v[8];
};

template <typename T>
inline void apply_span(T* lr, T* li, T* hr, T* hi, int64_t n, const T* u) {
  const T ar = u[0], ai = u[1], br = u[2], bi = u[3], cr = u[4], ci = u[5], dr = u[6], di = u[7];
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    const T xr = lr[k], xi = li[k], yr = hr[k], yi = hi[k];
    lr[k] = ar * xr - ai * xi + br * yr - bi * yi;
    li[k] = ar * xi + ai * xr + br * yi + bi * yr;
    hr[k] = cr * xr - ci * xi + dr * yr - di * yi;
    hi[k] = cr * xi + ci * xr + dr * yi + di * yr;
  }
}

// z_in = u^H z_out and g_in = u^H g_out on a span; acc[8] += entries of g_out z_in^H.
template <typename T>
inline void unapply_span(T* lr, T* li, T* hr, T* hi, T* glr, T* gli, T* ghr, T* ghi, int64_t n, const T* u,
                         double* acc) {
  const T ar = u[0], ai = u[1], br = u[2], bi = u[3], cr = u[4], ci = u[5], dr = u[6], di = u[7];
  // u^H = [[conj a, conj c], [conj b, conj d]]
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)
  for (int64_t k = 0; k < n; ++k) {
    const T xr = lr[k], xi = li[k], yr = hr[k], yi = hi[k];
    const T zr = ar * xr + ai * xi + cr * yr + ci * yi;  // conj(a) x + conj(c) y
    const T zi = ar * xi - ai * xr + cr * yi - ci * yr;
    const T wr = br * xr + bi * xi + dr * yr + di * yi;  // conj(b) x + conj(d) y
    const T wi = br * xi - bi * xr + dr * yi - di * yr;
    const T gxr = glr[k], gxi = gli[k], gyr = ghr[k], gyi = ghi[k];
    // g_out[a] * conj(z_in[b]): (gr + i gi)(zr - i zi) = (gr zr + gi zi) + i (gi zr - gr zi)
    s0 += gxr * zr + gxi * zi;
    s1 += gxi * zr - gxr * zi;
    s2 += gxr * wr + gxi * wi;
    s3 += gxi * wr - gxr * wi;
    s4 += gyr * zr + gyi * zi;
    s5 += gyi * zr - gyr * zi;
    s6 += gyr * wr + gyi * wi;
    s7 += gyi * wr - gyr * wi;
    lr[k] = zr;
    li[k] = zi;
    hr[k] = wr;
    hi[k] = wi;
    glr[k] = ar * gxr + ai * gxi + cr * gyr + ci * gyi;
    gli[k] = ar * gxi - ai * gxr + cr * gyi - ci * gyr;
    ghr[k] = br * gxr + bi * gxi + dr * gyr + di * gyi;
    ghi[k] = br * gxi - bi * gxr + dr * gyi - di * gyr;
  }
  acc[0] += s0; acc[1] += s1; acc[2] += s2; acc[3] += s3;
  acc[4] += s4; acc[5] += s5; acc[6] += s6; acc[7] += s7;
}

// The lowest bits (stride < SMALL) have spans too short to pay a call and a reduction each: they
// are gathered into contiguous (lo, hi) buffers for a whole chunk, handled as one long span, and
// scattered back.
constexpr int SMALL_BITS = 3;

template <typename T>
inline void split_pairs(const T* x, T* lo, T* hi, int64_t size, int b) {
  const int64_t st = int64_t(1) << b, half = size / 2;
  for (int64_t p = 0; p < half; ++p) {
    const int64_t i = ((p >> b) << (b + 1)) | (p & (st - 1));
    lo[p] = x[i];
    hi[p] = x[i + st];
  }
}

template <typename T>
inline void join_pairs(T* x, const T* lo, const T* hi, int64_t size, int b) {
  const int64_t st = int64_t(1) << b, half = size / 2;
  for (int64_t p = 0; p < half; ++p) {
    const int64_t i = ((p >> b) << (b + 1)) | (p & (st - 1));
    x[i] = lo[p];
    x[i + st] = hi[p];
  }
}

// Chunk of `size` amplitudes at re / im (split planes), its low `bits` bits; u per bit (8 each).
template <typename T>
inline void capply_low(T* re, T* im, int bits, const T* u) {
  const int64_t size = int64_t(1) << bits, half = size / 2;
  thread_local std::vector<T> buf;
  buf.resize(4 * half);
  T *lr = buf.data(), *li = lr + half, *hr = li + half, *hi = hr + half;
  for (int b = 0; b < bits; ++b) {
    const int64_t st = int64_t(1) << b;
    if (b < SMALL_BITS) {
      split_pairs(re, lr, hr, size, b);
      split_pairs(im, li, hi, size, b);
      apply_span(lr, li, hr, hi, half, u + 8 * b);
      join_pairs(re, lr, hr, size, b);
      join_pairs(im, li, hi, size, b);
      continue;
    }
    for (int64_t base = 0; base < size; base += 2 * st)
      apply_span(re + base, im + base, re + base + st, im + base + st, st, u + 8 * b);
  }
}

template <typename T>
inline void cunapply_low(T* re, T* im, T* gre, T* gim, int bits, const T* u, double* acc) {
  const int64_t size = int64_t(1) << bits, half = size / 2;
  thread_local std::vector<T> buf;
  buf.resize(8 * half);
  T *lr = buf.data(), *li = lr + half, *hr = li + half, *hi = hr + half;
  T *glr = hi + half, *gli = glr + half, *ghr = gli + half, *ghi = ghr + half;
  for (int b = 0; b < bits; ++b) {
    const int64_t st = int64_t(1) << b;
    if (b < SMALL_BITS) {
      split_pairs(re, lr, hr, size, b);
      split_pairs(im, li, hi, size, b);
      split_pairs(gre, glr, ghr, size, b);
      split_pairs(gim, gli, ghi, size, b);
      unapply_span(lr, li, hr, hi, glr, gli, ghr, ghi, half, u + 8 * b, acc + 8 * b);
      join_pairs(re, lr, hr, size, b);
      join_pairs(im, li, hi, size, b);
      join_pairs(gre, glr, ghr, size, b);
      join_pairs(gim, gli, ghi, size, b);
      continue;
    }
    for (int64_t base = 0; base < size; base += 2 * st)
      unapply_span(re + base, im + base, re + base + st, im + base + st, gre + base, gim + base, gre + base + st,
                   gim + base + st, st, u + 8 * b, acc + 8 * b);
  }
}

// High bits on a column tile; `planes` pointers (re, im[, gre, gim]) each of one row's plane, read
// from `from` (the same planes, or where the backward's input lies, left unwritten; null: planes).
template <typename T>
inline void ctile(T** planes, int nplanes, int high, int low, int64_t col, int64_t width, const T* u, double* acc,
                  const T* const* from = nullptr) {
  const int64_t rows = int64_t(1) << high, ld = int64_t(1) << low;
  thread_local std::vector<T> buf;
  buf.resize(nplanes * rows * width);
  for (int p = 0; p < nplanes; ++p) {
    const T* in = from ? from[p] : planes[p];
    for (int64_t r = 0; r < rows; ++r)
      std::copy(in + r * ld + col, in + r * ld + col + width, buf.data() + (p * rows + r) * width);
  }
  T* t[4];
  for (int p = 0; p < nplanes; ++p) t[p] = buf.data() + p * rows * width;
  for (int h = 0; h < high; ++h) {
    const int64_t st = int64_t(1) << h;
    const T* uh = u + 8 * (low + h);
    for (int64_t base = 0; base < rows; base += 2 * st)
      for (int64_t r = base; r < base + st; ++r) {
        const int64_t o = r * width, p = (r + st) * width;
        if (nplanes == 2)
          apply_span(t[0] + o, t[1] + o, t[0] + p, t[1] + p, width, uh);
        else
          unapply_span(t[0] + o, t[1] + o, t[0] + p, t[1] + p, t[2] + o, t[3] + o, t[2] + p, t[3] + p, width, uh,
                       acc + 8 * (low + h));
      }
  }
  for (int p = 0; p < nplanes; ++p)
    for (int64_t r = 0; r < rows; ++r)
      std::copy(buf.data() + (p * rows + r) * width, buf.data() + (p * rows + r + 1) * width, planes[p] + r * ld + col);
}

// u (layers, n, 8) float64 in wire order -> (layers, n, 8) of T in bit order.
template <typename T>
std::vector<T> bit_order(const double* u, int64_t layers, int64_t n) {
  std::vector<T> out(layers * n * 8);
  for (int64_t l = 0; l < layers; ++l)
    for (int64_t b = 0; b < n; ++b)
      for (int k = 0; k < 8; ++k) out[(l * n + b) * 8 + k] = T(u[(l * n + (n - 1 - b)) * 8 + k]);
  return out;
}

template <typename T>
int cx_forward(const T* in, T* a, T* b, const double* u64, int64_t layers, const int32_t* perm, const T* sign,
               int64_t rows, int64_t n, int threads) {
  if (layers == 0) return std::copy(in, in + (2 * rows << n), a), 0;  // no layer: the input itself
  const Shape sh = shape_of(rows, n);
  const auto u = bit_order<T>(u64, layers, n);
  T* cur = a;
  T* nxt = b;
  for (int64_t l = 0; l < layers; ++l) {
    const T* ul = u.data() + l * sh.n * 8;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t job = 0; job < sh.rows * sh.chunks; ++job) {
      const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
      const T* from = l == 0 ? in : cur;
      const T* src[2] = {from + 2 * row * sh.dim, from + 2 * row * sh.dim + sh.dim};
      T* dst[2] = {nxt + 2 * row * sh.dim + start, nxt + 2 * row * sh.dim + sh.dim + start};
      permute_chunk<true, 2>(dst, src, perm, sign, row * sh.dim + start, int64_t(1) << sh.low);
      capply_low(dst[0], dst[1], int(sh.low), ul);
    }
    if (sh.high > 0) {
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int64_t job = 0; job < sh.rows * sh.tiles; ++job) {
        const int64_t row = job / sh.tiles, col = (job % sh.tiles) * sh.tile;
        T* planes[2] = {nxt + 2 * row * sh.dim, nxt + 2 * row * sh.dim + sh.dim};
        ctile(planes, 2, int(sh.high), int(sh.low), col, sh.tile, ul, nullptr);
      }
    }
    std::swap(cur, nxt);
  }
  return cur == a ? 0 : 1;
}

// psi_in, g_in: the final state and its gradient, read by the last layer's first pass only and
// never written (as ry_backward's); psi, g, psi2, g2 scratch; part: max(jobs) * n * 8 float64
// scratch; du (layers, n, 8) float64 output in wire order.
template <typename T>
int cx_backward(const T* psi_in, const T* g_in, T* psi, T* g, T* psi2, T* g2, double* part, double* du,
                const double* u64, int64_t layers, const int32_t* perm, const T* sign, int64_t rows, int64_t n,
                int threads) {
  if (layers == 0) return std::copy(g_in, g_in + (2 * rows << n), g), 0;  // no layer: the gradient itself
  const Shape sh = shape_of(rows, n);
  const int64_t jobs_low = sh.rows * sh.chunks, jobs_high = sh.rows * sh.tiles;
  const int64_t jobs = std::max(jobs_low, jobs_high), stride = sh.n * 8;
  const auto u = bit_order<T>(u64, layers, n);
  T* x = psi;
  T* gx = g;
  T* xo = psi2;
  T* go = g2;
  for (int64_t l = layers - 1; l >= 0; --l) {
    const T* ul = u.data() + l * stride;
    std::fill(part, part + jobs * stride, 0.0);
    // the last layer reads the input: its high bits' tiles copy it in, or else its low bits' chunks
    const T* xin = l == layers - 1 ? psi_in : x;
    const T* gin = l == layers - 1 ? g_in : gx;
    const bool copy_x = sh.high == 0 && xin != x, copy_g = sh.high == 0 && gin != gx;  // each only where it differs
    if (sh.high > 0) {
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int64_t job = 0; job < jobs_high; ++job) {
        const int64_t row = job / sh.tiles, col = (job % sh.tiles) * sh.tile;
        T* base = x + 2 * row * sh.dim;
        T* gbase = gx + 2 * row * sh.dim;
        T* planes[4] = {base, base + sh.dim, gbase, gbase + sh.dim};
        const T* xs = xin + 2 * row * sh.dim;
        const T* gs = gin + 2 * row * sh.dim;
        const T* from[4] = {xs, xs + sh.dim, gs, gs + sh.dim};
        ctile(planes, 4, int(sh.high), int(sh.low), col, sh.tile, ul, part + job * stride, from);
      }
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t job = 0; job < jobs_low; ++job) {
      const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
      T* xr = x + 2 * row * sh.dim + start;
      T* xi = xr + sh.dim;
      T* gr = gx + 2 * row * sh.dim + start;
      T* gi = gr + sh.dim;
      const int64_t at = 2 * row * sh.dim + start, len = int64_t(1) << sh.low;
      if (copy_x) std::copy(xin + at, xin + at + len, xr), std::copy(xin + at + sh.dim, xin + at + sh.dim + len, xi);
      if (copy_g) std::copy(gin + at, gin + at + len, gr), std::copy(gin + at + sh.dim, gin + at + sh.dim + len, gi);
      cunapply_low(xr, xi, gr, gi, int(sh.low), ul, part + job * stride);
      T* dst[4] = {xo + 2 * row * sh.dim, xo + 2 * row * sh.dim + sh.dim, go + 2 * row * sh.dim, go + 2 * row * sh.dim + sh.dim};
      const T* src[4] = {xr, xi, gr, gi};
      permute_chunk<false, 4>(dst, src, perm, sign, row * sh.dim + start, int64_t(1) << sh.low);
    }
    for (int64_t job = 0; job < jobs; ++job)
      for (int64_t b = 0; b < sh.n; ++b)
        for (int k = 0; k < 8; ++k) du[(l * sh.n + (sh.n - 1 - b)) * 8 + k] += part[job * stride + b * 8 + k];
    std::swap(x, xo);
    std::swap(gx, go);
  }
  return gx == g ? 0 : 1;
}

// ------------------------------------------------------------------------------------------
// Complex rows (split planes) whose rotation is Ry between Z rotations: RyRz, RzRy, Rot (Rz Ry Rz).
// The Ry on every wire is real, so it runs as the real rows' rotations on both planes (the cost of
// two Ry rows); the Z rotations of a layer are one diagonal phase per amplitude,
// exp(i a(x)), a(x) = -1/2 sum_b phi_b z_b(x), z_b(x) = 1 - 2 bit_b(x) (Rz(phi) = diag(e^{-i phi/2},
// e^{i phi/2})), read from two tables over the low and high halves of the index bits. A layer's
// leading phase ("pre", applied before its Ry) is applied in its gather; its trailing phase
// ("post") is carried into the next layer's gather, read at the source index (the permutation moves
// a phase with its amplitude), and the last layer's is a final pass. The backward's phase
// gradients: dL/dphi_b = 1/2 sum_x z_b(x) Im(conj(g_x) z_x), z the phase's output, g its gradient.

template <typename T>
struct Phases {
  int64_t n = 0, half = 0, nlo = 0, nhi = 0;
  std::vector<T> lo, hi;  // per layer: (re, im) pairs, nlo then nhi entries
  Phases(const double* phi, int64_t layers, int64_t n_) : n(n_), half(n_ / 2), nlo(int64_t(1) << (n_ / 2)),
                                                            nhi(int64_t(1) << (n_ - n_ / 2)) {
    if (phi == nullptr) return;
    lo.resize(layers * nlo * 2);
    hi.resize(layers * nhi * 2);
    auto fill = [&](T* out, int64_t l, int64_t count, int64_t first_bit) {
      for (int64_t x = 0; x < count; ++x) {
        double a = 0;
        for (int64_t k = 0; (int64_t(1) << k) < count; ++k)
          a -= 0.5 * phi[l * n + (n - 1 - (first_bit + k))] * (((x >> k) & 1) ? -1.0 : 1.0);
        out[2 * x] = T(std::cos(a));
        out[2 * x + 1] = T(std::sin(a));
      }
    };
    for (int64_t l = 0; l < layers; ++l) {
      fill(lo.data() + l * nlo * 2, l, nlo, 0);
      fill(hi.data() + l * nhi * 2, l, nhi, half);
    }
  }
  bool on() const { return !lo.empty(); }
  // (re, im) <- exp(i a_l(x)) (re, im); conj: exp(-i a_l(x))
  template <bool CONJ>
  inline void apply(int64_t l, int64_t x, T& re, T& im) const {
    const T* p = lo.data() + (l * nlo + (x & (nlo - 1))) * 2;
    const T* q = hi.data() + (l * nhi + (x >> half)) * 2;
    const T pr = p[0] * q[0] - p[1] * q[1];
    const T pi = CONJ ? -(p[0] * q[1] + p[1] * q[0]) : p[0] * q[1] + p[1] * q[0];
    const T r = re * pr - im * pi;
    im = re * pi + im * pr;
    re = r;
  }
};

// acc[b] += sum_k z_b(start + k) v[k], k < 2**bits, for all n bits of start + k (start's low
// `bits` bits are 0); v is consumed. Folds halves: about 2 * 2**bits additions.
inline void signed_sums(double* v, int bits, int64_t start, int64_t n, double* acc) {
  for (int b = bits - 1; b >= 0; --b) {
    const int64_t half = int64_t(1) << b;
    double d = 0;
    for (int64_t j = 0; j < half; ++j) {
      d += v[j] - v[j + half];
      v[j] += v[j + half];
    }
    acc[b] += d;
  }
  for (int64_t b = bits; b < n; ++b) acc[b] += ((start >> b) & 1) ? -v[0] : v[0];
}

template <typename T>
int yz_forward(const T* in, T* a, T* b, const double* theta, const double* pre, const double* post, int64_t layers,
               const int32_t* perm, const T* sign, int64_t rows, int64_t n, int threads) {
  if (layers == 0) return std::copy(in, in + (2 * rows << n), a), 0;  // no layer, no phase: the input itself
  const Shape sh = shape_of(rows, n);
  const auto cs = trig<T>(theta, layers, n, false), sn = trig<T>(theta, layers, n, true);
  const Phases<T> lead(pre, layers, n), trail(post, layers, n);
  const int64_t len = int64_t(1) << sh.low;
  T* cur = a;
  T* nxt = b;
  for (int64_t l = 0; l < layers; ++l) {
    const T* c = cs.data() + l * sh.n;
    const T* s = sn.data() + l * sh.n;
    const bool carry = l > 0 && trail.on(), first = lead.on();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t job = 0; job < sh.rows * sh.chunks; ++job) {
      const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
      const T* from = l == 0 ? in : cur;
      const T* src[2] = {from + 2 * row * sh.dim, from + 2 * row * sh.dim + sh.dim};
      T* dst[2] = {nxt + 2 * row * sh.dim + start, nxt + 2 * row * sh.dim + sh.dim + start};
      // the previous layer's trailing Z phase, read at the source index, then this layer's leading one
      auto phases = [&](int64_t i, int64_t j, T (&v)[2]) {
        if (carry) trail.template apply<false>(l - 1, j, v[0], v[1]);
        if (first) lead.template apply<false>(l, start + i, v[0], v[1]);
      };
      permute_chunk<true, 2>(dst, src, perm, sign, row * sh.dim + start, len, phases);
      rotate_low(dst[0], int(sh.low), c, s);
      rotate_low(dst[1], int(sh.low), c, s);
    }
    if (sh.high > 0) {
#pragma omp parallel for num_threads(threads) schedule(static)
      for (int64_t job = 0; job < 2 * sh.rows * sh.tiles; ++job) {  // (row, plane, tile)
        const int64_t plane = job / sh.tiles, col = (job % sh.tiles) * sh.tile;
        rotate_high(nxt + plane * sh.dim, int(sh.high), int(sh.low), col, sh.tile, c, s);
      }
    }
    std::swap(cur, nxt);
  }
  if (trail.on()) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t job = 0; job < sh.rows * sh.chunks; ++job) {
      const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
      T* re = cur + 2 * row * sh.dim + start;
      T* im = re + sh.dim;
      for (int64_t i = 0; i < len; ++i) trail.template apply<false>(layers - 1, start + i, re[i], im[i]);
    }
  }
  return cur == a ? 0 : 1;
}

// YZ rows' backward, first: the last layer's trailing Z phase undone on the state and its
// gradient; its angle sums in part + job * stride + 2n.
template <typename T>
void undo_final_phase(T* x, T* gx, const Phases<T>& trail, const Shape& sh, int64_t layers, double* part, int64_t stride,
                      int threads) {
  const int64_t len = int64_t(1) << sh.low;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t job = 0; job < sh.rows * sh.chunks; ++job) {
    const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
    T* xr = x + 2 * row * sh.dim + start;
    T* xi = xr + sh.dim;
    T* gr = gx + 2 * row * sh.dim + start;
    T* gi = gr + sh.dim;
    thread_local std::vector<double> q;
    q.resize(len);
    for (int64_t i = 0; i < len; ++i) {
      q[i] = double(gr[i] * xi[i] - gi[i] * xr[i]);
      trail.template apply<true>(layers - 1, start + i, xr[i], xi[i]);
      trail.template apply<true>(layers - 1, start + i, gr[i], gi[i]);
    }
    signed_sums(q.data(), int(sh.low), start, sh.n, part + job * stride + 2 * sh.n);
  }
}

// YZ rows' backward, one layer's low bits: un-rotate the state and its gradient on each chunk,
// undo the layer's leading phase and the previous layer's trailing one (`carried`: null when it
// has none, else where its gradient terms go by source index), and scatter back through the
// signed permutation; the angle sums in part + job * stride (Ry, then lead).
template <typename T>
void undo_layer_low(T* x, T* gx, T* xo, T* go, const T* c, const T* s, const Phases<T>& lead, const Phases<T>& trail,
                    int64_t l, double* carried, const int32_t* perm, const T* sign, const Shape& sh, double* part,
                    int64_t stride, int threads) {
  const int64_t jobs_low = sh.rows * sh.chunks, len = int64_t(1) << sh.low;
  const bool carry = carried != nullptr, first = lead.on();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t job = 0; job < jobs_low; ++job) {
    const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
    T* xr = x + 2 * row * sh.dim + start;
    T* xi = xr + sh.dim;
    T* gr = gx + 2 * row * sh.dim + start;
    T* gi = gr + sh.dim;
    double* acc = part + job * stride;
    std::vector<double> dots(sh.low, 0.0);
    unrotate_low(xr, gr, int(sh.low), c, s, dots.data());
    unrotate_low(xi, gi, int(sh.low), c, s, dots.data());
    for (int64_t b = 0; b < sh.low; ++b) acc[b] += dots[b];
    thread_local std::vector<double> q;
    q.resize(len);
    double* qs = carry ? carried + row * sh.dim : nullptr;  // no buffer without a carried phase
    // v = (state re, im, gradient re, im): the phases' gradient terms, then both phases undone
    auto phases = [&](int64_t i, int64_t j, T (&v)[4]) {
      q[i] = double(v[2] * v[1] - v[3] * v[0]);
      if (carry) qs[j] = q[i];
      if (first) {
        lead.template apply<true>(l, start + i, v[0], v[1]);
        lead.template apply<true>(l, start + i, v[2], v[3]);
      }
      if (carry) {
        trail.template apply<true>(l - 1, j, v[0], v[1]);
        trail.template apply<true>(l - 1, j, v[2], v[3]);
      }
    };
    T* dst[4] = {xo + 2 * row * sh.dim, xo + 2 * row * sh.dim + sh.dim, go + 2 * row * sh.dim, go + 2 * row * sh.dim + sh.dim};
    const T* src[4] = {xr, xi, gr, gi};
    permute_chunk<false, 4>(dst, src, perm, sign, row * sh.dim + start, len, phases);
    if (first) signed_sums(q.data(), int(sh.low), start, sh.n, acc + sh.n);
  }
}

// The carried phase's angle sums, by source index (`carried`, rows x 2**n), into part + job * stride + 2n.
inline void carried_sums(double* carried, const Shape& sh, double* part, int64_t stride, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t job = 0; job < sh.rows * sh.chunks; ++job) {
    const int64_t row = job / sh.chunks, start = (job % sh.chunks) << sh.low;
    signed_sums(carried + row * sh.dim + start, int(sh.low), start, sh.n, part + job * stride + 2 * sh.n);
  }
}

// part: max(jobs) * 3n float64 scratch; dtheta, dpre, dpost (layers, n) float64 outputs (dpre,
// dpost null with pre, post).
template <typename T>
int yz_backward(T* psi, T* g, T* psi2, T* g2, double* part, double* dtheta, double* dpre, double* dpost,
                const double* theta, const double* pre, const double* post, int64_t layers, const int32_t* perm,
                const T* sign, int64_t rows, int64_t n, int threads) {
  if (layers == 0) return 0;  // no layer, no phase: g holds the gradient already
  const Shape sh = shape_of(rows, n);
  const int64_t jobs_low = sh.rows * sh.chunks, jobs_high = sh.rows * sh.tiles;
  const int64_t jobs = std::max(jobs_low, jobs_high), stride = 3 * sh.n;
  const auto cs = trig<T>(theta, layers, n, false), sn = trig<T>(theta, layers, n, true);
  const Phases<T> lead(pre, layers, n), trail(post, layers, n);
  std::vector<double> carried(trail.on() && layers > 1 ? sh.rows * sh.dim : 0);  // q by source index, for dpost
  auto reduce = [&](double* out, int64_t l, int64_t offset) {
    for (int64_t job = 0; job < jobs; ++job)
      for (int64_t b = 0; b < sh.n; ++b) out[l * sh.n + (sh.n - 1 - b)] += 0.5 * part[job * stride + offset + b];
  };
  T* x = psi;
  T* gx = g;
  T* xo = psi2;
  T* go = g2;
  if (trail.on()) {  // the final pass's phase
    std::fill(part, part + jobs * stride, 0.0);
    undo_final_phase(x, gx, trail, sh, layers, part, stride, threads);
    reduce(dpost, layers - 1, 2 * sh.n);
  }
  for (int64_t l = layers - 1; l >= 0; --l) {
    const T* c = cs.data() + l * sh.n;
    const T* s = sn.data() + l * sh.n;
    const bool carry = l > 0 && trail.on(), first = lead.on();
    std::fill(part, part + jobs * stride, 0.0);
    unrotate_high_rows(x, gx, x, gx, 2, sh, c, s, part, stride, threads);
    undo_layer_low(x, gx, xo, go, c, s, lead, trail, l, carry ? carried.data() : nullptr, perm, sign, sh, part, stride,
                   threads);
    if (carry) carried_sums(carried.data(), sh, part, stride, threads);  // the carried phase's, by source index
    reduce(dtheta, l, 0);
    if (first) reduce(dpre, l, sh.n);
    if (carry) reduce(dpost, l - 1, 2 * sh.n);
    std::swap(x, xo);
    std::swap(gx, go);
  }
  return gx == g ? 0 : 1;
}

// ------------------------------------------------------------------------------------------
// Controlled 2x2 gates (parametrised entanglers: CRx, CRy, CRz, CRot, CU3), applied in order to
// complex rows in split planes, in place. Gate j acts on the amplitudes whose control bit is 1:
// pairs (target bit 0, target bit 1) mixed by u_j = [[a, b], [c, d]] (8 doubles: re, im of a, b,
// c, d). Those pairs come in spans of 2**min(target bit, control bit) consecutive indices; a job
// is a fixed range of spans of one row (~4096 pairs), whatever the thread count, so the backward's
// partial sums are added in the same order on any number of threads.

struct CtrlGeometry {
  int64_t span, spans, per_job, jobs, lo, hi, mid, ctrl, tgt;
};

inline CtrlGeometry ctrl_geometry(int64_t n, int32_t control, int32_t target) {
  CtrlGeometry g;
  const int64_t pc = n - 1 - control, pt = n - 1 - target;
  g.lo = std::min(pc, pt);
  g.hi = std::max(pc, pt);
  g.mid = g.hi - g.lo - 1;
  g.ctrl = int64_t(1) << pc;
  g.tgt = int64_t(1) << pt;
  g.span = int64_t(1) << g.lo;
  g.spans = (int64_t(1) << n) / 4 / g.span;
  g.per_job = std::max<int64_t>(1, 4096 / g.span);
  g.jobs = (g.spans + g.per_job - 1) / g.per_job;
  return g;
}

// the first index of span s: its free bits from s, control bit 1, target bit 0, bits below lo 0
inline int64_t ctrl_start(const CtrlGeometry& g, int64_t s) {
  const int64_t low = s & ((int64_t(1) << g.mid) - 1), high = s >> g.mid;
  return (high << (g.hi + 1)) | (low << (g.lo + 1)) | g.ctrl;
}

// Gate j's jobs in parallel: body(job, row offset, span index range, u) for every job, with u the
// gate's matrix in T. Jobs are fixed ranges of spans of one row (ctrl_geometry), whatever the
// thread count.
template <typename T, typename Body>
void gate_jobs(const double* u64, int64_t j, int64_t rows, int64_t n, int threads,
               const CtrlGeometry& g, Body body) {
  T u[8];
  for (int k = 0; k < 8; ++k) u[k] = T(u64[j * 8 + k]);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t job = 0; job < rows * g.jobs; ++job) {
    const int64_t row = job / g.jobs, first = (job % g.jobs) * g.per_job;
    body(job, 2 * row * (int64_t(1) << n), first, std::min(first + g.per_job, g.spans), u);
  }
}

template <typename T>
void ctrl_forward(T* x, const double* u64, const int32_t* pairs, int64_t npairs, int64_t rows, int64_t n,
                  int threads) {
  const int64_t dim = int64_t(1) << n;
  for (int64_t j = 0; j < npairs; ++j) {
    const CtrlGeometry g = ctrl_geometry(n, pairs[2 * j], pairs[2 * j + 1]);
    gate_jobs<T>(u64, j, rows, n, threads, g, [&](int64_t, int64_t off, int64_t s0, int64_t s1, const T* u) {
      T* re = x + off;
      T* im = re + dim;
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t a = ctrl_start(g, s), b = a + g.tgt;
        apply_span(re + a, im + a, re + b, im + b, g.span, u);
      }
    });
  }
}

// ctrl_backward's spans [s0, s1) of one gate where they are short (fewer than 64 pairs): each
// span as unapply_span, with the gradient's eight sums kept per column in T over at most 16 spans,
// then added in float64 (unapply_span's reductions across lanes, eight a span, cost more than a
// short span's arithmetic).
template <typename T>
inline void unapply_spans_by_column(T* re, T* im, T* gre, T* gim, const CtrlGeometry& g, int64_t s0, int64_t s1,
                                    const T* u, double* acc) {
  constexpr int64_t W = 64, FLUSH = 16;
  const int64_t w = g.span;
  const T ar = u[0], ai = u[1], br = u[2], bi = u[3], cr = u[4], ci = u[5], dr = u[6], di = u[7];
  T sums[8][W] = {};
  int64_t spans = 0;
  auto flush = [&] {
    for (int q = 0; q < 8; ++q) {
      double total = 0;
      for (int64_t k = 0; k < w; ++k) total += double(sums[q][k]), sums[q][k] = 0;
      acc[q] += total;
    }
  };
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t a = ctrl_start(g, s), b = a + g.tgt;
    T *lr = re + a, *li = im + a, *hr = re + b, *hi = im + b;
    T *glr = gre + a, *gli = gim + a, *ghr = gre + b, *ghi = gim + b;
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) {
      const T xr = lr[k], xi = li[k], yr = hr[k], yi = hi[k];
      const T zr = ar * xr + ai * xi + cr * yr + ci * yi;  // conj(a) x + conj(c) y
      const T zi = ar * xi - ai * xr + cr * yi - ci * yr;
      const T wr = br * xr + bi * xi + dr * yr + di * yi;  // conj(b) x + conj(d) y
      const T wi = br * xi - bi * xr + dr * yi - di * yr;
      const T gxr = glr[k], gxi = gli[k], gyr = ghr[k], gyi = ghi[k];
      sums[0][k] += gxr * zr + gxi * zi;
      sums[1][k] += gxi * zr - gxr * zi;
      sums[2][k] += gxr * wr + gxi * wi;
      sums[3][k] += gxi * wr - gxr * wi;
      sums[4][k] += gyr * zr + gyi * zi;
      sums[5][k] += gyi * zr - gyr * zi;
      sums[6][k] += gyr * wr + gyi * wi;
      sums[7][k] += gyi * wr - gyr * wi;
      lr[k] = zr;
      li[k] = zi;
      hr[k] = wr;
      hi[k] = wi;
      glr[k] = ar * gxr + ai * gxi + cr * gyr + ci * gyi;
      gli[k] = ar * gxi - ai * gxr + cr * gyi - ci * gyr;
      ghr[k] = br * gxr + bi * gxi + dr * gyr + di * gyi;
      ghi[k] = br * gxi - bi * gxr + dr * gyi - di * gyr;
    }
    if (++spans == FLUSH) flush(), spans = 0;
  }
  if (spans) flush();
}

// psi: the forward's output, un-applied in place to the first gate's input; lam: dL/d(output),
// turned in place into dL/d(input). part: rows * max(1, 2**n / 16384) * 8 float64 scratch;
// du (npairs, 8) float64: dL/du_j = sum of lam_out psi_in^H over gate j's pairs.
template <typename T>
void ctrl_backward(T* psi, T* lam, double* part, double* du, const double* u64, const int32_t* pairs,
                   int64_t npairs, int64_t rows, int64_t n, int threads) {
  const int64_t dim = int64_t(1) << n;
  for (int64_t j = npairs - 1; j >= 0; --j) {
    const CtrlGeometry g = ctrl_geometry(n, pairs[2 * j], pairs[2 * j + 1]);
    gate_jobs<T>(u64, j, rows, n, threads, g, [&](int64_t job, int64_t off, int64_t s0, int64_t s1, const T* u) {
      T *re = psi + off, *gre = lam + off;
      T *im = re + dim, *gim = gre + dim;
      double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      if (g.span >= 64) {
        for (int64_t s = s0; s < s1; ++s) {
          const int64_t a = ctrl_start(g, s), b = a + g.tgt;
          unapply_span(re + a, im + a, re + b, im + b, gre + a, gim + a, gre + b, gim + b, g.span, u, acc);
        }
      } else {
        unapply_spans_by_column(re, im, gre, gim, g, s0, s1, u, acc);
      }
      for (int k = 0; k < 8; ++k) part[job * 8 + k] = acc[k];
    });
    for (int64_t job = 0; job < rows * g.jobs; ++job)
      for (int k = 0; k < 8; ++k) du[j * 8 + k] += part[job * 8 + k];
  }
}

// ------------------------------------------------------------------------------------------
// The unnormalised Walsh-Hadamard transform of rows of 2**n values (the IQP closed form,
// closed_form.py): per bit the butterfly (a, d) <- (a + d, a - d), the low bits per in-cache chunk,
// the high bits per column tile as the rotations above. No job sums another's values: the result
// does not depend on the thread count.

template <typename T, int ST>
inline void butterfly_bit(T* x, int64_t size, int64_t st_rt) {
  const int64_t st = ST > 0 ? ST : st_rt;  // small strides known at compile time vectorise
  for (int64_t base = 0; base < size; base += 2 * st) {
    T* lo = x + base;
    T* hi = lo + st;
#pragma omp simd
    for (int64_t k = 0; k < st; ++k) {
      const T a = lo[k], d = hi[k];
      lo[k] = a + d;
      hi[k] = a - d;
    }
  }
}

template <typename T>
inline void butterfly_high(T* x, int high, int low, int64_t col, int64_t width) {
  on_high_tile(x, high, low, col, width, [](int, T* lo, T* hi, int64_t n) {
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const T a = lo[k], d = hi[k];
      lo[k] = a + d;
      hi[k] = a - d;
    }
  });
}

// The transform of in (rows, 2**n), never written, into x; in may be x (in place).
template <typename T>
void wht_rows(const T* in, T* x, int64_t rows, int64_t n, int threads) {
  const Shape sh = shape_of(rows, n);
  const int64_t size = int64_t(1) << sh.low;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t job = 0; job < sh.rows * sh.chunks; ++job) {
    T* chunk = x + job * size;  // row job / chunks, chunk job % chunks: rows are contiguous
    if (in != x) std::copy(in + job * size, in + (job + 1) * size, chunk);
    each_low_bit(int(sh.low), [&](auto st, int b) { butterfly_bit<T, st.value>(chunk, size, int64_t(1) << b); });
  }
  if (sh.high == 0) return;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t job = 0; job < sh.rows * sh.tiles; ++job) {
    const int64_t row = job / sh.tiles, col = (job % sh.tiles) * sh.tile;
    butterfly_high(x + row * sh.dim, int(sh.high), int(sh.low), col, sh.tile);
  }
}

// --- the generator's classical part, front half (qt/fused.py) ------------------------------------
// u = P[:p] -> post-processing -> input norm -> kappa = b + bits . w[:n] + z w[n] -> centring, and
// its gradient. flags: bits 0-1 the post-processing (0 none, 1 scale, 2 toolkit), 4 odd negatives,
// 8 standardised input, 16 centred output, 32 bits read as -1/+1 (else 0/1). params: gamma, beta,
// alpha, bias. Sums are taken in double, in index order: one thread, deterministic.
constexpr double MAP_TINY = 1e-12;
enum : int64_t { MAP_POST = 3, MAP_ODD = 4, MAP_STD = 8, MAP_CENTER = 16, MAP_PM1 = 32 };

// The mapping's bits term, sum_q bit_q(i) w[q] (wire q is bit n-1-q of i; a bit reads 0/1, or
// -1/+1 under pm1), for every i: two tables, over the low and the high half of the bits, added.
struct BitSums {
  int64_t half;
  std::vector<double> lo, hi;
  BitSums(const double* w, int64_t n, bool pm1) : half(n / 2), lo(int64_t(1) << (n / 2)), hi(int64_t(1) << (n - n / 2)) {
    auto fill = [&](std::vector<double>& t, int64_t first, int64_t count) {
      for (int64_t x = 0; x < int64_t(t.size()); ++x) {
        double s = 0;
        for (int64_t k = 0; k < count; ++k) {
          const double b = double((x >> k) & 1);
          s += (pm1 ? 2 * b - 1 : b) * w[n - 1 - (first + k)];
        }
        t[x] = s;
      }
    };
    fill(lo, 0, half);
    fill(hi, half, n - half);
  }
  double at(int64_t i) const { return lo[i & (int64_t(lo.size()) - 1)] + hi[i >> half]; }
};

// out[q] = sum_{i < p} v[i] bit_q(i) for every wire q (bits as in BitSums; total = sum_i v[i]), in
// about 2 * 2**m additions (2**m >= p): fold the high bits away one at a time, the upper half's
// sum being the bit's. v is copied, not changed.
inline void bit_sums_of(const double* v, int64_t p, int64_t n, bool pm1, double total, double* out) {
  int m = 0;
  while ((int64_t(1) << m) < p) ++m;
  std::vector<double> f(int64_t(1) << m, 0.0);
  std::copy(v, v + p, f.begin());
  for (int64_t b = n - 1; b >= 0; --b) {
    double ones = 0;
    if (b < m) {
      const int64_t h = int64_t(1) << b;
      for (int64_t j = 0; j < h; ++j) {
        ones += f[j + h];
        f[j] += f[j + h];
      }
    }
    out[n - 1 - b] = pm1 ? 2 * ones - total : ones;
  }
}

template <typename T>
double mean_of(const T* x, int64_t p) {
  double s = 0;
  for (int64_t i = 0; i < p; ++i) s += double(x[i]);
  return s / double(p);
}

// z (p), a (p: tanh of the scaled u, toolkit only), kappa (p); stats: the input norm's divisor and
// whether it was the std (1) or held at 1 (0).
template <typename T>
void qtmap_forward(const T* u, T* z, T* a, T* kappa, const double* w, double* stats, int64_t p, int64_t n,
                   int64_t flags, const double* params) {
  const int64_t post = flags & MAP_POST;
  const double gamma = params[0], beta = params[1], alpha = params[2], bias = params[3];
  const double s = gamma * std::ldexp(1.0, int(n - 1));
  std::vector<double> x(p);
  for (int64_t i = 0; i < p; ++i) {
    const double ui = double(u[i]);
    if (post == 0) {
      x[i] = ui;
    } else if (post == 1) {
      x[i] = ui * std::ldexp(1.0, int(n));
    } else {
      const double ai = std::tanh(s * ui), t = beta * ai;
      a[i] = T(ai);
      const double m = (flags & MAP_ODD) ? std::fabs(t) : t;
      const double y = std::pow(std::max(m, MAP_TINY), alpha);
      x[i] = ((flags & MAP_ODD) && t < 0) ? -y : y;
    }
  }
  if (post == 2) {
    const double mx = mean_of(x.data(), p);
    for (auto& v : x) v -= mx;
  }
  double divisor = 1, spread = 0, shift = 0;
  if ((flags & MAP_STD) && p > 1) {
    shift = mean_of(x.data(), p);
    double ss = 0, top = 0;
    for (int64_t i = 0; i < p; ++i) {
      ss += (x[i] - shift) * (x[i] - shift);
      top = std::max(top, std::fabs(x[i]));
    }
    const double sd = std::sqrt(ss / double(p - 1));
    if (sd > 1e-6 * std::max(top, double(std::numeric_limits<T>::min()))) divisor = sd, spread = 1;
  }
  stats[0] = divisor;
  stats[1] = spread;
  const BitSums bits(w, n, flags & MAP_PM1);
  double total = 0;
  for (int64_t i = 0; i < p; ++i) {
    const double zi = (x[i] - shift) / divisor;
    z[i] = T(zi);
    const double k = bias + zi * w[n] + bits.at(i);
    x[i] = k;  // kappa, before centring
    total += k;
  }
  const double centre = (flags & MAP_CENTER) ? total / double(p) : 0;
  for (int64_t i = 0; i < p; ++i) kappa[i] = T(x[i] - centre);
}

// g (p): the gradient at kappa; du (p): at u; dw (n + 2): at w[:n], w[n] and the bias.
template <typename T>
void qtmap_backward(const T* g, const T* z, const T* a, const double* w, const double* stats, T* du, double* dw,
                    int64_t p, int64_t n, int64_t flags, const double* params) {
  const int64_t post = flags & MAP_POST;
  const double gamma = params[0], beta = params[1], alpha = params[2];
  const double s = gamma * std::ldexp(1.0, int(n - 1));
  const double gm = (flags & MAP_CENTER) ? mean_of(g, p) : 0;
  std::vector<double> d(p);
  std::fill(dw, dw + n + 2, 0.0);
  double dz_mean = 0, dz_z = 0;
  for (int64_t i = 0; i < p; ++i) {
    const double gi = double(g[i]) - gm;
    dw[n] += gi * double(z[i]);
    dw[n + 1] += gi;
    d[i] = gi;
  }
  bit_sums_of(d.data(), p, n, flags & MAP_PM1, dw[n + 1], dw);  // dw[q] = sum_i g_i bit_q(i)
  for (int64_t i = 0; i < p; ++i) {
    d[i] *= w[n];  // at z
    dz_mean += d[i];
    dz_z += d[i] * double(z[i]);
  }
  if ((flags & MAP_STD) && p > 1) {
    dz_mean /= double(p);
    const double cov = stats[1] != 0 ? dz_z / double(p - 1) : 0.0;
    for (int64_t i = 0; i < p; ++i) d[i] = (d[i] - dz_mean - double(z[i]) * cov) / stats[0];
  }
  if (post == 0) {
    for (int64_t i = 0; i < p; ++i) du[i] = T(d[i]);
    return;
  }
  if (post == 1) {
    for (int64_t i = 0; i < p; ++i) du[i] = T(d[i] * std::ldexp(1.0, int(n)));
    return;
  }
  const double dm = mean_of(d.data(), p);
  for (int64_t i = 0; i < p; ++i) {
    const double ai = double(a[i]), t = beta * ai;
    const double m = (flags & MAP_ODD) ? std::fabs(t) : t;
    const double dt = m >= MAP_TINY ? (d[i] - dm) * alpha * std::pow(std::max(m, MAP_TINY), alpha - 1) : 0.0;
    du[i] = T(dt * beta * (1 - ai * ai) * s);
  }
}


// The time-series target (nets.LSTMRegressor): one LSTM layer (gate order input, forget, cell,
// output; one bias per gate), then Linear(hidden -> 1) on the last hidden state. x (B, T, I);
// wih (4H, I), whh (4H, H), bias (4H), hw (H), hb (1); pred (B). Sums in double, one thread: at
// the paper's size (B 10, T 4, H 20) torch's LSTM is almost all dispatch, this is a few thousand
// multiply-adds. acts (T, B, 4H): the gates after their activations; cs, hs (T + 1, B, H): the
// cell and hidden states from the zero state on (kept for the backward; null: not kept).
inline double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }
// tanh, through one exp where |v| >= 0.5 (std::tanh costs about 2.5 of them): there the result is
// at least 0.46 in size and the formula's absolute error (about 2e-16) is a relative one too;
// nearer 0 the formula would cancel, so std::tanh.
inline double tanh_of(double v) {
  const double m = std::fabs(v);
  if (m < 0.5) return std::tanh(v);
  const double t = m > 20 ? 1.0 : 1.0 - 2.0 / (std::exp(2 * m) + 1.0);
  return v < 0 ? -t : t;
}

template <typename T>
void lstm_forward(const T* x, const T* wih, const T* whh, const T* bias, const T* hw, const T* hb, T* pred, T* acts,
                  T* cs, T* hs, int64_t B, int64_t Tn, int64_t I, int64_t H) {
  const int64_t G = 4 * H;
  // the weights as (input, gate) columns, so each step's gate sums run over the gates (vectorised)
  // instead of one serial dot product per gate
  std::vector<double> wt((I + H) * G), gate(G), h(H), c(H);
  for (int64_t r = 0; r < G; ++r) {
    for (int64_t k = 0; k < I; ++k) wt[k * G + r] = double(wih[r * I + k]);
    for (int64_t k = 0; k < H; ++k) wt[(I + k) * G + r] = double(whh[r * H + k]);
  }
  for (int64_t b = 0; b < B; ++b) {
    std::fill(h.begin(), h.end(), 0.0);
    std::fill(c.begin(), c.end(), 0.0);
    if (cs) {
      std::fill(cs + b * H, cs + (b + 1) * H, T(0));
      std::fill(hs + b * H, hs + (b + 1) * H, T(0));
    }
    for (int64_t t = 0; t < Tn; ++t) {
      const T* xt = x + (b * Tn + t) * I;
      for (int64_t r = 0; r < G; ++r) gate[r] = double(bias[r]);
      for (int64_t k = 0; k < I + H; ++k) {
        const double v = k < I ? double(xt[k]) : h[k - I];
        const double* col = wt.data() + k * G;
        for (int64_t r = 0; r < G; ++r) gate[r] += col[r] * v;
      }
      T* at = acts ? acts + (t * B + b) * G : nullptr;
      for (int64_t k = 0; k < H; ++k) {
        // rounded to T as torch stores them, so the backward differentiates what the forward used
        const double in = double(T(sigmoid(gate[k]))), fg = double(T(sigmoid(gate[H + k])));
        const double cell = double(T(tanh_of(gate[2 * H + k]))), out = double(T(sigmoid(gate[3 * H + k])));
        c[k] = double(T(fg * c[k] + in * cell));
        h[k] = double(T(out * tanh_of(c[k])));
        if (at) at[k] = T(in), at[H + k] = T(fg), at[2 * H + k] = T(cell), at[3 * H + k] = T(out);
      }
      if (cs) {
        for (int64_t k = 0; k < H; ++k) cs[((t + 1) * B + b) * H + k] = T(c[k]), hs[((t + 1) * B + b) * H + k] = T(h[k]);
      }
    }
    double s = double(hb[0]);
    for (int64_t k = 0; k < H; ++k) s += double(hw[k]) * h[k];
    pred[b] = T(s);
  }
}

// gp (B): the gradient at pred. Writes dx (B, T, I; null: not wanted), dwih, dwhh, dbias, dhw, dhb
// (all overwritten); the sums over the batch and the steps run in double.
template <typename T>
void lstm_backward(const T* gp, const T* x, const T* wih, const T* whh, const T* hw, const T* acts, const T* cs,
                   const T* hs, T* dx, T* dwih, T* dwhh, T* dbias, T* dhw, T* dhb, int64_t B, int64_t Tn, int64_t I,
                   int64_t H) {
  const int64_t G = 4 * H;
  std::vector<double> w((I + H) * G), gw((I + H) * G, 0.0), gb(G, 0.0), ghw(H, 0.0), dh(H), dc(H), dg(G), v(I + H), dxv(I);
  for (int64_t r = 0; r < G; ++r) {  // rows of [wih | whh]: each gate's inputs, then its hidden weights
    for (int64_t k = 0; k < I; ++k) w[r * (I + H) + k] = double(wih[r * I + k]);
    for (int64_t k = 0; k < H; ++k) w[r * (I + H) + I + k] = double(whh[r * H + k]);
  }
  double ghb = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double d = double(gp[b]);
    ghb += d;
    const T* hT = hs + (Tn * B + b) * H;
    for (int64_t k = 0; k < H; ++k) ghw[k] += d * double(hT[k]), dh[k] = d * double(hw[k]), dc[k] = 0;
    for (int64_t t = Tn - 1; t >= 0; --t) {
      const T* at = acts + (t * B + b) * G;
      const T* cprev = cs + (t * B + b) * H;
      const T* cnow = cs + ((t + 1) * B + b) * H;
      const T* hprev = hs + (t * B + b) * H;
      for (int64_t k = 0; k < H; ++k) {
        const double in = at[k], fg = at[H + k], cell = at[2 * H + k], out = at[3 * H + k];
        const double tc = tanh_of(double(cnow[k]));
        const double dct = dc[k] + dh[k] * out * (1 - tc * tc);
        dg[k] = dct * cell * in * (1 - in);
        dg[H + k] = dct * double(cprev[k]) * fg * (1 - fg);
        dg[2 * H + k] = dct * in * (1 - cell * cell);
        dg[3 * H + k] = dh[k] * tc * out * (1 - out);
        dc[k] = dct * fg;
      }
      const T* xt = x + (b * Tn + t) * I;
      for (int64_t k = 0; k < I; ++k) v[k] = double(xt[k]);
      for (int64_t k = 0; k < H; ++k) v[I + k] = double(hprev[k]);
      double* dv = dh.data();  // the gradient at [x_t | h_(t-1)]: dx_t, then the next dh
      std::fill(dxv.begin(), dxv.end(), 0.0);
      std::fill(dh.begin(), dh.end(), 0.0);
      const double* __restrict vk = v.data();
      double* __restrict dvk = dv;
      double* __restrict dxk = dxv.data();
      for (int64_t r = 0; r < G; ++r) {
        const double e = dg[r];
        gb[r] += e;
        double* __restrict gr = gw.data() + r * (I + H);
        const double* __restrict wr = w.data() + r * (I + H);
        for (int64_t k = 0; k < I + H; ++k) gr[k] += e * vk[k];
        for (int64_t k = 0; k < I; ++k) dxk[k] += wr[k] * e;
        for (int64_t k = 0; k < H; ++k) dvk[k] += wr[I + k] * e;
      }
      if (dx) {
        for (int64_t k = 0; k < I; ++k) dx[(b * Tn + t) * I + k] = T(dxv[k]);
      }
    }
  }
  for (int64_t r = 0; r < G; ++r) {
    for (int64_t k = 0; k < I; ++k) dwih[r * I + k] = T(gw[r * (I + H) + k]);
    for (int64_t k = 0; k < H; ++k) dwhh[r * H + k] = T(gw[r * (I + H) + I + k]);
    dbias[r] = T(gb[r]);
  }
  for (int64_t i = 0; i < H; ++i) dhw[i] = T(ghw[i]);
  dhb[0] = T(ghb);
}


// ------------------------------------------------------------------------------------------
// The time-series training steps of train/fused_step.py, each one call.
//
// From u = P[:p] to the loss's gradient at u: the mapping's front half, the float32 cast, the LSTM,
// the MSE's gradient (2 (pred - y) / B, as torch's mse_loss_backward) and every backward back to u
// (du) and to the mapping's weights and bias (dw, n + 2 entries). The same functions and roundings
// as the autograd path's nodes.
template <typename T>
void lstm_tail(const T* u, const double* w, const double* params, int64_t p, int64_t n, int64_t flags, const float* x,
               const float* y, int64_t B, int64_t Tn, int64_t I, int64_t H, float* pred, T* du, double* dw) {
  const int64_t G = 4 * H;
  std::vector<T> z(p), act(p), kappa(p);
  double stats[2];
  qtmap_forward<T>(u, z.data(), act.data(), kappa.data(), w, stats, p, n, flags, params);
  std::vector<float> kf(p), gf(p);
  for (int64_t i = 0; i < p; ++i) kf[i] = float(kappa[i]);
  const float* wih = kf.data();
  const float* whh = wih + G * I;
  const float* bias = whh + G * H;
  const float* hw = bias + G;
  const float* hb = hw + H;
  std::vector<float> acts(Tn * B * G), cs((Tn + 1) * B * H), hs((Tn + 1) * B * H), gp(B);
  lstm_forward<float>(x, wih, whh, bias, hw, hb, pred, acts.data(), cs.data(), hs.data(), B, Tn, I, H);
  const float norm = float(2.0 / double(B));  // the MSE's gradient at pred, as torch's mse_loss_backward
  for (int64_t i = 0; i < B; ++i) gp[i] = norm * (pred[i] - y[i]);
  float* dwih = gf.data();
  float* dwhh = dwih + G * I;
  float* dbias = dwhh + G * H;
  float* dhw = dbias + G;
  float* dhb = dhw + H;
  lstm_backward<float>(gp.data(), x, wih, whh, hw, acts.data(), cs.data(), hs.data(), nullptr, dwih, dwhh, dbias, dhw,
                       dhb, B, Tn, I, H);
  std::vector<T> g(p);
  for (int64_t i = 0; i < p; ++i) g[i] = T(gf[i]);
  qtmap_backward<T>(g.data(), z.data(), act.data(), w, stats, du, dw, p, n, flags, params);
}

// One training step of a time-series run whose generator is one fixed candidate: the circuit
// (one Ry row on the kernel from `start`, or the constant probabilities `fixed` of an
// angle-independent candidate), then `lstm_tail`, then the row's backward into dtheta (layers, n)
// (untouched without a circuit). The same functions as the autograd path, in its order, with the
// same roundings where it rounds (P and kappa in T, the weights and their gradients in float).
// Writes pred (B) (the loss is the caller's), dtheta and dw (n + 2).
template <typename T>
void qt_lstm_step(const T* start, const T* fixed, const double* theta, int64_t layers, const int32_t* perm,
                  const T* sign, int64_t n, const double* w, const double* params, int64_t p, int64_t flags,
                  const float* x, const float* y, int64_t B, int64_t Tn, int64_t I, int64_t H, float* pred,
                  double* dtheta, double* dw, int threads) {
  const int64_t dim = int64_t(1) << n;
  std::vector<T> a, b, probs;
  const T* psi = nullptr;
  if (fixed == nullptr) {
    a.assign(start, start + dim);
    b.resize(dim);
    const bool in_b = ry_forward<T>(a.data(), a.data(), b.data(), theta, layers, perm, sign, 1, n, 1, threads);
    psi = in_b ? b.data() : a.data();
    probs.resize(p);
    for (int64_t i = 0; i < p; ++i) probs[i] = psi[i] * psi[i];
  }
  std::vector<T> du(p);
  lstm_tail<T>(fixed == nullptr ? probs.data() : fixed, w, params, p, n, flags, x, y, B, Tn, I, H, pred, du.data(), dw);
  if (fixed != nullptr) return;
  std::vector<T> x2(dim), g1(dim, T(0)), x3(dim), g2(dim);
  for (int64_t i = 0; i < p; ++i) g1[i] = du[i] * (T(2) * psi[i]);
  const Shape sh = shape_of(1, n);
  std::vector<double> part(std::max(sh.chunks, sh.tiles) * n, 0.0);
  std::fill(dtheta, dtheta + layers * n, 0.0);
  ry_backward<T>(psi, g1.data(), x2.data(), g1.data(), x3.data(), g2.data(), part.data(), dtheta, theta, layers, perm,
                 sign, 1, n, 1,
                 threads);
}

// torch.remainder's floating-point rule: fmod, moved into [0, m) for a positive modulus m.
inline double remainder_of(double v, double m) {
  double r = std::fmod(v, m);
  if (r != 0 && ((m < 0) != (r < 0))) r += m;
  return r;
}

// DiffQAS's time-series step (train/fused_step.py): the ensemble P = sum_j w_j P_j of three kinds of
// candidate rows, then `lstm_tail`, then every backward:
// - S constant rows `fixed` (S, 2**n), candidates fixed_at[s] (angle-independent: no circuit);
// - R Ry rows from `start` (R, 2**n) through `perm`/`sign` (R, 2**n; sign null: none), candidates
//   ry_at[r], simulated together (rows are independent: each is the single-row simulation's);
// - C closed-form rows (quantum/closed_form.py), candidates cf_at[c]: a = the angles scattered to
//   the slots index[c] (layers * n), A = WHT(a) in float64, h = remainder(A, 4 pi) in T / 2,
//   P = (WHT(cos h)^2 + WHT(sin h)^2) / 4**n.
// w_j = softmax(structural)_j (softmax != 0) or structural_j, over the N candidates. Outputs: pred
// (B), dtheta (layers, n), dstruct (N) and dw (n + 2), float64. Sums run in a fixed order whatever
// the thread count; they are not the autograd path's order (its matrix products are BLAS's), so
// the two paths agree within rounding, not bit for bit.
template <typename T>
void qt_mix_lstm_step(const T* fixed, const int64_t* fixed_at, int64_t S, const T* start, const int32_t* perm,
                      const T* sign, const int64_t* ry_at, int64_t R, const int64_t* index, const int64_t* cf_at,
                      int64_t C, const double* theta, int64_t layers, int64_t n, const T* structural, int64_t N,
                      int64_t softmax, const double* w, const double* params, int64_t p, int64_t flags, const float* x,
                      const float* y, int64_t B, int64_t Tn, int64_t I, int64_t H, float* pred, double* dtheta,
                      double* dstruct, double* dw, int threads) {
  const int64_t dim = int64_t(1) << n, slots = layers * n;
  const double scale = std::ldexp(1.0, int(-2 * n)), turn = 4 * std::numbers::pi;
  // the structural weights, as the autograd path rounds them (softmax in T)
  std::vector<T> wt(N);
  if (softmax != 0) {
    T top = structural[0];
    for (int64_t j = 1; j < N; ++j) top = std::max(top, structural[j]);
    T total = 0;
    for (int64_t j = 0; j < N; ++j) total += (wt[j] = T(std::exp(structural[j] - top)));
    for (int64_t j = 0; j < N; ++j) wt[j] /= total;
  } else {
    std::copy(structural, structural + N, wt.data());
  }
  // every row's P (only its first p entries reach the mapping)
  std::vector<T> a(R * dim), b(R * dim);
  std::copy(start, start + R * dim, a.data());
  const T* psi = a.data();
  if (R > 0 && ry_forward<T>(a.data(), a.data(), b.data(), theta, layers, perm, sign, R, n, 1, threads)) psi = b.data();
  std::vector<T> half(C * dim), re(C * dim), im(C * dim);
  for (int64_t c = 0; c < C; ++c) {
    std::vector<double> phase(dim, 0.0);
    for (int64_t k = 0; k < slots; ++k) phase[index[c * slots + k]] += theta[k];
    wht_rows<double>(phase.data(), phase.data(), 1, n, threads);
    for (int64_t i = 0; i < dim; ++i) {
      const T h = T(remainder_of(phase[i], turn)) / T(2);
      half[c * dim + i] = h;
      re[c * dim + i] = std::cos(h);
      im[c * dim + i] = std::sin(h);
    }
  }
  wht_rows<T>(re.data(), re.data(), C, n, threads);
  wht_rows<T>(im.data(), im.data(), C, n, threads);
  auto row_p = [&](int64_t kind, int64_t r, int64_t i) -> T {
    if (kind == 0) return fixed[r * dim + i];
    if (kind == 1) return psi[r * dim + i] * psi[r * dim + i];
    return (re[r * dim + i] * re[r * dim + i] + im[r * dim + i] * im[r * dim + i]) * T(scale);
  };
  const int64_t counts[3] = {S, R, C};
  const int64_t* at[3] = {fixed_at, ry_at, cf_at};
  std::vector<T> u(p, T(0));
  for (int64_t kind = 0; kind < 3; ++kind)
    for (int64_t r = 0; r < counts[kind]; ++r) {
      const T wj = wt[at[kind][r]];
      for (int64_t i = 0; i < p; ++i) u[i] += wj * row_p(kind, r, i);
    }
  std::vector<T> du(p);
  lstm_tail<T>(u.data(), w, params, p, n, flags, x, y, B, Tn, I, H, pred, du.data(), dw);
  // the structural weights' gradient: sum_i du_i P_j[i], then through the softmax
  std::vector<double> dwt(N, 0.0);
  for (int64_t kind = 0; kind < 3; ++kind)
    for (int64_t r = 0; r < counts[kind]; ++r) {
      double s = 0;
      for (int64_t i = 0; i < p; ++i) s += double(du[i]) * double(row_p(kind, r, i));
      dwt[at[kind][r]] = s;
    }
  if (softmax != 0) {
    double dot = 0;
    for (int64_t j = 0; j < N; ++j) dot += double(wt[j]) * dwt[j];
    for (int64_t j = 0; j < N; ++j) dstruct[j] = double(wt[j]) * (dwt[j] - dot);
  } else {
    std::copy(dwt.begin(), dwt.end(), dstruct);
  }
  std::fill(dtheta, dtheta + slots, 0.0);
  // the Ry rows' backward, all rows in one call (their angle sums added)
  if (R > 0) {
    std::vector<T> x2(R * dim), g1(R * dim, T(0)), x3(R * dim), g2(R * dim);
    for (int64_t r = 0; r < R; ++r) {
      const T wj = wt[ry_at[r]];
      for (int64_t i = 0; i < p; ++i) g1[r * dim + i] = (wj * du[i]) * (T(2) * psi[r * dim + i]);
    }
    const Shape sh = shape_of(R, n);
    std::vector<double> part(std::max(sh.chunks, sh.tiles) * R * n, 0.0);
    ry_backward<T>(psi, g1.data(), x2.data(), g1.data(), x3.data(), g2.data(), part.data(), dtheta, theta, layers,
                   perm, sign, R, n, 1,
                   threads);
  }
  // the closed-form rows' backward: P's gradient to the two transforms, to h, to A, to a, to theta
  for (int64_t c = 0; c < C; ++c) {
    const T wj = wt[cf_at[c]];
    std::vector<T> dre(dim, T(0)), dim_(dim, T(0));
    for (int64_t i = 0; i < p; ++i) {
      const T gp = (wj * du[i]) * T(scale);
      dre[i] = gp * (T(2) * re[c * dim + i]);
      dim_[i] = gp * (T(2) * im[c * dim + i]);
    }
    wht_rows<T>(dre.data(), dre.data(), 1, n, threads);  // the transform is its own transpose
    wht_rows<T>(dim_.data(), dim_.data(), 1, n, threads);
    std::vector<double> dphase(dim);
    for (int64_t i = 0; i < dim; ++i) {
      const T h = half[c * dim + i];
      dphase[i] = double((std::cos(h) * dim_[i] - std::sin(h) * dre[i]) / T(2));
    }
    wht_rows<double>(dphase.data(), dphase.data(), 1, n, threads);
    for (int64_t k = 0; k < slots; ++k) dtheta[k] += dphase[index[c * slots + k]];
  }
}

}  // namespace

extern "C" {

int diffqas_abi_version() { return 12; }

int ry_forward_f64(const double* in, double* a, double* b, const double* theta, int64_t layers, const int32_t* perm,
                   const double* sign, int64_t rows, int64_t n, int64_t group, int threads) {
  return ry_forward<double>(in, a, b, theta, layers, perm, sign, rows, n, group, threads);
}
int ry_forward_f32(const float* in, float* a, float* b, const double* theta, int64_t layers, const int32_t* perm,
                   const float* sign, int64_t rows, int64_t n, int64_t group, int threads) {
  return ry_forward<float>(in, a, b, theta, layers, perm, sign, rows, n, group, threads);
}
int ry_backward_f64(const double* psi_in, const double* g_in, double* psi, double* g, double* psi2, double* g2,
                    double* part, double* dtheta, const double* theta, int64_t layers, const int32_t* perm,
                    const double* sign, int64_t rows, int64_t n, int64_t group, int threads) {
  return ry_backward<double>(psi_in, g_in, psi, g, psi2, g2, part, dtheta, theta, layers, perm, sign, rows, n, group,
                          threads);
}
int ry_backward_f32(const float* psi_in, const float* g_in, float* psi, float* g, float* psi2, float* g2,
                    double* part, double* dtheta, const double* theta, int64_t layers, const int32_t* perm,
                    const float* sign, int64_t rows, int64_t n, int64_t group, int threads) {
  return ry_backward<float>(psi_in, g_in, psi, g, psi2, g2, part, dtheta, theta, layers, perm, sign, rows, n, group,
                          threads);
}
int cx_forward_f64(const double* in, double* a, double* b, const double* u, int64_t layers, const int32_t* perm,
                   const double* sign, int64_t rows, int64_t n, int threads) {
  return cx_forward<double>(in, a, b, u, layers, perm, sign, rows, n, threads);
}
int cx_forward_f32(const float* in, float* a, float* b, const double* u, int64_t layers, const int32_t* perm,
                   const float* sign, int64_t rows, int64_t n, int threads) {
  return cx_forward<float>(in, a, b, u, layers, perm, sign, rows, n, threads);
}
int cx_backward_f64(const double* psi_in, const double* g_in, double* psi, double* g, double* psi2, double* g2,
                    double* part, double* du, const double* u, int64_t layers, const int32_t* perm,
                    const double* sign, int64_t rows, int64_t n, int threads) {
  return cx_backward<double>(psi_in, g_in, psi, g, psi2, g2, part, du, u, layers, perm, sign, rows, n, threads);
}
int cx_backward_f32(const float* psi_in, const float* g_in, float* psi, float* g, float* psi2, float* g2,
                    double* part, double* du, const double* u, int64_t layers, const int32_t* perm,
                    const float* sign, int64_t rows, int64_t n, int threads) {
  return cx_backward<float>(psi_in, g_in, psi, g, psi2, g2, part, du, u, layers, perm, sign, rows, n, threads);
}

int yz_forward_f64(const double* in, double* a, double* b, const double* theta, const double* pre, const double* post,
                   int64_t layers, const int32_t* perm, const double* sign, int64_t rows, int64_t n, int threads) {
  return yz_forward<double>(in, a, b, theta, pre, post, layers, perm, sign, rows, n, threads);
}
int yz_forward_f32(const float* in, float* a, float* b, const double* theta, const double* pre, const double* post,
                   int64_t layers, const int32_t* perm, const float* sign, int64_t rows, int64_t n, int threads) {
  return yz_forward<float>(in, a, b, theta, pre, post, layers, perm, sign, rows, n, threads);
}
int yz_backward_f64(double* psi, double* g, double* psi2, double* g2, double* part, double* dtheta, double* dpre,
                    double* dpost, const double* theta, const double* pre, const double* post, int64_t layers,
                    const int32_t* perm, const double* sign, int64_t rows, int64_t n, int threads) {
  return yz_backward<double>(psi, g, psi2, g2, part, dtheta, dpre, dpost, theta, pre, post, layers, perm, sign, rows, n,
                             threads);
}
int yz_backward_f32(float* psi, float* g, float* psi2, float* g2, double* part, double* dtheta, double* dpre,
                    double* dpost, const double* theta, const double* pre, const double* post, int64_t layers,
                    const int32_t* perm, const float* sign, int64_t rows, int64_t n, int threads) {
  return yz_backward<float>(psi, g, psi2, g2, part, dtheta, dpre, dpost, theta, pre, post, layers, perm, sign, rows, n,
                            threads);
}

void ctrl_forward_f64(double* x, const double* u, const int32_t* pairs, int64_t npairs, int64_t rows, int64_t n,
                      int threads) {
  ctrl_forward<double>(x, u, pairs, npairs, rows, n, threads);
}
void ctrl_forward_f32(float* x, const double* u, const int32_t* pairs, int64_t npairs, int64_t rows, int64_t n,
                      int threads) {
  ctrl_forward<float>(x, u, pairs, npairs, rows, n, threads);
}
void ctrl_backward_f64(double* psi, double* lam, double* part, double* du, const double* u, const int32_t* pairs,
                       int64_t npairs, int64_t rows, int64_t n, int threads) {
  ctrl_backward<double>(psi, lam, part, du, u, pairs, npairs, rows, n, threads);
}
void ctrl_backward_f32(float* psi, float* lam, double* part, double* du, const double* u, const int32_t* pairs,
                       int64_t npairs, int64_t rows, int64_t n, int threads) {
  ctrl_backward<float>(psi, lam, part, du, u, pairs, npairs, rows, n, threads);
}

int qtmap_forward_f64(const double* u, double* z, double* a, double* kappa, const double* w, double* stats, int64_t p,
                      int64_t n, int64_t flags, const double* params, int) {
  qtmap_forward<double>(u, z, a, kappa, w, stats, p, n, flags, params);
  return 0;
}
int qtmap_forward_f32(const float* u, float* z, float* a, float* kappa, const double* w, double* stats, int64_t p,
                      int64_t n, int64_t flags, const double* params, int) {
  qtmap_forward<float>(u, z, a, kappa, w, stats, p, n, flags, params);
  return 0;
}
int qtmap_backward_f64(const double* g, const double* z, const double* a, const double* w, const double* stats,
                       double* du, double* dw, int64_t p, int64_t n, int64_t flags, const double* params, int) {
  qtmap_backward<double>(g, z, a, w, stats, du, dw, p, n, flags, params);
  return 0;
}
int qtmap_backward_f32(const float* g, const float* z, const float* a, const double* w, const double* stats, float* du,
                       double* dw, int64_t p, int64_t n, int64_t flags, const double* params, int) {
  qtmap_backward<float>(g, z, a, w, stats, du, dw, p, n, flags, params);
  return 0;
}

int wht_f64(const double* in, double* x, int64_t rows, int64_t n, int threads) {
  wht_rows<double>(in, x, rows, n, threads);
  return 0;
}
int wht_f32(const float* in, float* x, int64_t rows, int64_t n, int threads) {
  wht_rows<float>(in, x, rows, n, threads);
  return 0;
}

int lstm_forward_f64(const double* x, const double* wih, const double* whh, const double* bias, const double* hw, const double* hb,
                     double* pred, double* acts, double* cs, double* hs, int64_t B, int64_t steps, int64_t I, int64_t H, int) {
  lstm_forward<double>(x, wih, whh, bias, hw, hb, pred, acts, cs, hs, B, steps, I, H);
  return 0;
}
int lstm_backward_f64(const double* gp, const double* x, const double* wih, const double* whh, const double* hw, const double* acts,
                      const double* cs, const double* hs, double* dx, double* dwih, double* dwhh, double* dbias, double* dhw, double* dhb,
                      int64_t B, int64_t steps, int64_t I, int64_t H, int) {
  lstm_backward<double>(gp, x, wih, whh, hw, acts, cs, hs, dx, dwih, dwhh, dbias, dhw, dhb, B, steps, I, H);
  return 0;
}

int lstm_forward_f32(const float* x, const float* wih, const float* whh, const float* bias, const float* hw, const float* hb,
                     float* pred, float* acts, float* cs, float* hs, int64_t B, int64_t steps, int64_t I, int64_t H, int) {
  lstm_forward<float>(x, wih, whh, bias, hw, hb, pred, acts, cs, hs, B, steps, I, H);
  return 0;
}
int lstm_backward_f32(const float* gp, const float* x, const float* wih, const float* whh, const float* hw, const float* acts,
                      const float* cs, const float* hs, float* dx, float* dwih, float* dwhh, float* dbias, float* dhw, float* dhb,
                      int64_t B, int64_t steps, int64_t I, int64_t H, int) {
  lstm_backward<float>(gp, x, wih, whh, hw, acts, cs, hs, dx, dwih, dwhh, dbias, dhw, dhb, B, steps, I, H);
  return 0;
}

int qt_lstm_step_f64(const double* start, const double* fixed, const double* theta, int64_t layers, const int32_t* perm,
                     const double* sign, int64_t n, const double* w, const double* params, int64_t p, int64_t flags,
                     const float* x, const float* y, int64_t B, int64_t steps, int64_t I, int64_t H, float* pred,
                     double* dtheta, double* dw, int threads) {
  qt_lstm_step<double>(start, fixed, theta, layers, perm, sign, n, w, params, p, flags, x, y, B, steps, I, H, pred, dtheta, dw,
                   threads);
  return 0;
}

int qt_lstm_step_f32(const float* start, const float* fixed, const double* theta, int64_t layers, const int32_t* perm,
                     const float* sign, int64_t n, const double* w, const double* params, int64_t p, int64_t flags,
                     const float* x, const float* y, int64_t B, int64_t steps, int64_t I, int64_t H, float* pred,
                     double* dtheta, double* dw, int threads) {
  qt_lstm_step<float>(start, fixed, theta, layers, perm, sign, n, w, params, p, flags, x, y, B, steps, I, H, pred, dtheta, dw,
                   threads);
  return 0;
}

int qt_mix_lstm_step_f64(const double* fixed, const int64_t* fixed_at, int64_t S, const double* start,
                         const int32_t* perm, const double* sign, const int64_t* ry_at, int64_t R, const int64_t* index,
                         const int64_t* cf_at, int64_t C, const double* theta, int64_t layers, int64_t n,
                         const double* structural, int64_t N, int64_t softmax, const double* w, const double* params,
                         int64_t p, int64_t flags, const float* x, const float* y, int64_t B, int64_t steps, int64_t I,
                         int64_t H, float* pred, double* dtheta, double* dstruct, double* dw, int threads) {
  qt_mix_lstm_step<double>(fixed, fixed_at, S, start, perm, sign, ry_at, R, index, cf_at, C, theta, layers, n,
                           structural, N, softmax, w, params, p, flags, x, y, B, steps, I, H, pred, dtheta, dstruct, dw,
                           threads);
  return 0;
}

int qt_mix_lstm_step_f32(const float* fixed, const int64_t* fixed_at, int64_t S, const float* start,
                         const int32_t* perm, const float* sign, const int64_t* ry_at, int64_t R, const int64_t* index,
                         const int64_t* cf_at, int64_t C, const double* theta, int64_t layers, int64_t n,
                         const float* structural, int64_t N, int64_t softmax, const double* w, const double* params,
                         int64_t p, int64_t flags, const float* x, const float* y, int64_t B, int64_t steps, int64_t I,
                         int64_t H, float* pred, double* dtheta, double* dstruct, double* dw, int threads) {
  qt_mix_lstm_step<float>(fixed, fixed_at, S, start, perm, sign, ry_at, R, index, cf_at, C, theta, layers, n,
                          structural, N, softmax, w, params, p, flags, x, y, B, steps, I, H, pred, dtheta, dstruct, dw,
                          threads);
  return 0;
}

}  // extern "C"
