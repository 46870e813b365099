// Elementwise XSAM kernels over one contiguous chunk, on raw pointers.
//
// An output may alias an input only index for index (params and points are often
// the same tensor), so no loop carries a dependence from one element to the next;
// `#pragma GCC ivdep` says so where the compiler would otherwise give up.
//
// This header is compiled once per instruction set (chunk_kernels_{generic,avx2,
// avx512}.cpp), inside the namespace named by XSAM_ISA. It includes no torch header,
// so that no inline function is compiled for two ISAs under one name. Storage types:
// float, double, BF16 and F16 (the bits of bfloat16 / IEEE half). Math runs in float
// (double for double); 16-bit values are rounded to nearest even once, when stored.
// Sums accumulate in double. The 16-bit conversions are written as integer and float
// operations with selects, so that they vectorise (gcc 12 leaves _Float16 conversions
// scalar, even with F16C), and they are exact: subnormals, infinities and NaN included.
// The extension is built with -ffp-contract=off: one rounding per operation, in the
// order written, as the reference backend computes, whatever the instruction set.
//
// Every switch that changes a loop body (backup, momentum, Nesterov, ASAM geometry,
// ...) is a template parameter, so each variant is a straight loop that vectorises.
// With the adaptive (ASAM) geometry, T = |theta_0| + eta is recomputed per element
// from theta_0, in the order base.py fixes: t = |theta_0| + eta, then t * t once.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernel_table.h"

namespace xsam_cpu {
namespace XSAM_ISA {
namespace {

struct BF16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

template <typename S> struct Math { using T = float; };
template <> struct Math<double> { using T = double; };

inline float as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t as_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// `c ? a : b` as bit operations: gcc's if-conversion gives up on chains of `?:`
// around the F16 conversions (the loop then stays scalar), not on masks.
inline uint32_t select(bool c, uint32_t a, uint32_t b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return (a & m) | (b & ~m);
}

inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }
inline float load(const BF16* p, int64_t i) { return as_float(uint32_t(p[i].bits) << 16); }

// IEEE half -> float, exactly.
inline float load(const F16* p, int64_t i) {
  const uint32_t h = p[i].bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const int32_t em = static_cast<int32_t>(h & 0x7FFFu);  // exponent and mantissa
  // normal: move into place and rebias the exponent from 15 to 127
  const uint32_t normal = (uint32_t(em) << 13) + ((127u - 15u) << 23);
  // infinity / NaN: exponent all ones, payload kept (a quiet NaN stays quiet)
  const uint32_t special = (uint32_t(em) << 13) | 0x7F800000u;
  // zero / subnormal: mantissa * 2^-24, exact in float
  const uint32_t tiny = as_bits(static_cast<float>(em) * 0x1p-24f);
  const uint32_t mag = select(em >= 0x7C00, special, select(em < 0x0400, tiny, normal));
  return as_float(mag | sign);
}

inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(double* p, int64_t i, double v) { p[i] = v; }

// float -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
inline void store(BF16* p, int64_t i, float v) {
  const uint32_t u = as_bits(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  p[i].bits = static_cast<uint16_t>(std::isnan(v) ? 0x7FC0u : rounded);
}

// float -> IEEE half, round to nearest even; overflow gives infinity, NaN a quiet NaN.
inline void store(F16* p, int64_t i, float v) {
  const uint32_t u = as_bits(v);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const int32_t a = static_cast<int32_t>(u & 0x7FFFFFFFu);  // |v|, as bits
  // normal half range [2^-14, 65520): rebias, then round the 13 dropped bits to even
  const uint32_t r = uint32_t(a) - ((127u - 15u) << 23);
  const uint32_t normal = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
  // below 2^-14: adding 0.5 leaves |v| rounded (by the FPU, to nearest even) to a
  // multiple of 2^-24, the half subnormal unit, in the low mantissa bits
  const uint32_t tiny = as_bits(as_float(uint32_t(a)) + 0.5f) - as_bits(0.5f);
  const uint32_t mag = select(a > 0x7F800000, 0x7E00u,
                              select(a >= 0x477FF000, 0x7C00u,  // 65520 and up: infinity
                                     select(a >= 0x38800000, normal, tiny)));
  p[i].bits = static_cast<uint16_t>(mag | sign);
}

// ASAM's per-element scale T = |theta_0| + eta.
template <typename T>
inline T scale_of(T theta0, T eta) {
  return std::abs(theta0) + eta;
}

// The update direction G = c_d d + c_g g (adaptive: c_d (d / (T*T)) + c_g g).
template <bool ADAPTIVE, typename T>
inline T direction(T x, T theta0, T g, T cd, T cg, T eta) {
  T d = x - theta0;
  if constexpr (ADAPTIVE) {
    T t = scale_of(theta0, eta);
    d = d / (t * t);
  }
  return cd * d + cg * g;
}

// ------------------------------------------------------------------ reductions
// A sum over one chunk runs as LANES interleaved partial sums over LANES contiguous
// slices of it (then the tail), added in a fixed order: LANES independent chains of
// vector additions instead of one, which would bound the loop by the latency of a
// double add (about 1 element per cycle). The order depends on n only, so results
// stay independent of the thread count.
constexpr int64_t LANES = 4;

template <typename S, bool ADAPTIVE>
inline double sq_term(const S* g, const S* w, typename Math<S>::T eta, int64_t i) {
  using T = typename Math<S>::T;
  T gv = load(g, i);
  if constexpr (ADAPTIVE) gv = scale_of(T(load(w, i)), eta) * gv;
  double v = gv;
  return v * v;
}

template <typename S, bool ADAPTIVE>
void sumsq_loop(const S* g, const S* w, double eta_, int64_t n, double* out) {
  using T = typename Math<S>::T;
  const T eta = static_cast<T>(eta_);
  const int64_t q = n / LANES;
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t i = 0; i < q; ++i) {
    s0 += sq_term<S, ADAPTIVE>(g, w, eta, i);
    s1 += sq_term<S, ADAPTIVE>(g, w, eta, q + i);
    s2 += sq_term<S, ADAPTIVE>(g, w, eta, 2 * q + i);
    s3 += sq_term<S, ADAPTIVE>(g, w, eta, 3 * q + i);
  }
  for (int64_t i = LANES * q; i < n; ++i) s0 += sq_term<S, ADAPTIVE>(g, w, eta, i);
  out[0] = (s0 + s1) + (s2 + s3);
}

template <typename S>
void sumsq(const void* g, const void* w, const Geometry& geo, int64_t n, double* out) {
  if (geo.adaptive)
    return sumsq_loop<S, true>(static_cast<const S*>(g), static_cast<const S*>(w), geo.eta, n, out);
  sumsq_loop<S, false>(static_cast<const S*>(g), nullptr, 0.0, n, out);
}

// The three terms [(g_u)^2, (d_u)^2, d g] of element i.
template <typename S, bool ADAPTIVE>
inline void final_terms(const S* x, const S* b, const S* g, typename Math<S>::T eta, int64_t i,
                        double& gg, double& dd, double& dg) {
  using T = typename Math<S>::T;
  T bv = load(b, i), gv = load(g, i);
  T d = load(x, i) - bv;
  double gu = gv, du = d;
  if constexpr (ADAPTIVE) {
    T t = scale_of(bv, eta);
    gu = T(t * gv);
    du = T(d / t);
  }
  gg += gu * gu;
  dd += du * du;
  dg += double(d) * double(gv);
}

template <typename S, bool ADAPTIVE>
void final_sums_loop(const S* x, const S* b, const S* g, double eta_, int64_t n, double* out) {
  using T = typename Math<S>::T;
  const T eta = static_cast<T>(eta_);
  const int64_t h = n / 2;  // two slices: 6 independent chains
  double gg0 = 0.0, dd0 = 0.0, dg0 = 0.0, gg1 = 0.0, dd1 = 0.0, dg1 = 0.0;
#pragma omp simd reduction(+ : gg0, dd0, dg0, gg1, dd1, dg1)
  for (int64_t i = 0; i < h; ++i) {
    final_terms<S, ADAPTIVE>(x, b, g, eta, i, gg0, dd0, dg0);
    final_terms<S, ADAPTIVE>(x, b, g, eta, h + i, gg1, dd1, dg1);
  }
  for (int64_t i = 2 * h; i < n; ++i) final_terms<S, ADAPTIVE>(x, b, g, eta, i, gg0, dd0, dg0);
  out[0] = gg0 + gg1;
  out[1] = dd0 + dd1;
  out[2] = dg0 + dg1;
}

template <typename S>
void final_sums(const void* x_, const void* b_, const void* g_, const Geometry& geo, int64_t n,
                double* out) {
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  if (geo.adaptive) return final_sums_loop<S, true>(x, b, g, geo.eta, n, out);
  final_sums_loop<S, false>(x, b, g, 0.0, n, out);
}

// ------------------------------------------------------------------ ascent, points
template <typename S, bool BACKUP, bool ADAPTIVE>
void backup_ascent_loop(S* p, const S* g, S* b, double scale_, double eta_, int64_t n) {
  using T = typename Math<S>::T;
  const T scale = static_cast<T>(scale_), eta = static_cast<T>(eta_);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    T pv = load(p, i), gv = load(g, i);
    if constexpr (ADAPTIVE) {
      // theta_0: the params themselves when they are being backed up, else the backups
      T t = scale_of(BACKUP ? pv : T(load(b, i)), eta);
      gv = (t * t) * gv;
    }
    if constexpr (BACKUP) store(b, i, pv);
    store(p, i, pv + scale * gv);
  }
}

template <typename S>
void backup_ascent(void* p_, const void* g_, void* b_, double scale, bool backup,
                   const Geometry& geo, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* g = static_cast<const S*>(g_);
  S* b = static_cast<S*>(b_);
  if (geo.adaptive) {
    if (backup) return backup_ascent_loop<S, true, true>(p, g, b, scale, geo.eta, n);
    return backup_ascent_loop<S, false, true>(p, g, b, scale, geo.eta, n);
  }
  if (backup) return backup_ascent_loop<S, true, false>(p, g, b, scale, 0.0, n);
  backup_ascent_loop<S, false, false>(p, g, b, scale, 0.0, n);
}

template <typename S, bool ADAPTIVE>
void write_point_loop(S* out, const S* x, const S* b, const S* g, double cd_, double cg_,
                      double eta_, int64_t n) {
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(cd_), cg = static_cast<T>(cg_), eta = static_cast<T>(eta_);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    T bv = load(b, i), gv = load(g, i);
    if constexpr (ADAPTIVE) {
      T t = scale_of(bv, eta);
      gv = (t * t) * gv;
    }
    store(out, i, bv + (cd * (load(x, i) - bv) + cg * gv));
  }
}

template <typename S>
void write_point(void* out_, const void* x_, const void* b_, const void* g_, double cd,
                 double cg, const Geometry& geo, int64_t n) {
  S* out = static_cast<S*>(out_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  if (geo.adaptive) return write_point_loop<S, true>(out, x, b, g, cd, cg, geo.eta, n);
  write_point_loop<S, false>(out, x, b, g, cd, cg, 0.0, n);
}

template <typename S, bool ADAPTIVE>
void write_grad_restore_loop(S* p, const S* x, const S* b, S* g, double cd_, double cg_,
                             double eta_, int64_t n) {
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(cd_), cg = static_cast<T>(cg_), eta = static_cast<T>(eta_);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    T bv = load(b, i);
    store(g, i, direction<ADAPTIVE>(T(load(x, i)), bv, T(load(g, i)), cd, cg, eta));
    store(p, i, bv);
  }
}

template <typename S>
void write_grad_restore(void* p_, const void* x_, const void* b_, void* g_, double cd,
                        double cg, const Geometry& geo, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  S* g = static_cast<S*>(g_);
  if (geo.adaptive) return write_grad_restore_loop<S, true>(p, x, b, g, cd, cg, geo.eta, n);
  write_grad_restore_loop<S, false>(p, x, b, g, cd, cg, 0.0, n);
}

// ------------------------------------------------------------------ fused updates
// A weight decay of 0 adds 0 * theta_0, which leaves a finite step unchanged, as
// torch's skipped branch does.
template <typename S, bool MOMENTUM, bool INIT, bool NESTEROV, bool ADAPTIVE>
void sgd_loop(S* p, const S* x, const S* b, const S* g, S* buf, double cd_, double cg_,
              const SgdArgs& a, double eta_, int64_t n) {
  using T = typename Math<S>::T;
  // maximize negates G = c_d d + c_g g: exactly the same as negating both coefficients
  const T cd = static_cast<T>(a.maximize ? -cd_ : cd_);
  const T cg = static_cast<T>(a.maximize ? -cg_ : cg_);
  const T lr = static_cast<T>(a.lr), wd = static_cast<T>(a.weight_decay);
  const T mom = static_cast<T>(a.momentum), keep = static_cast<T>(1.0 - a.dampening);
  const T eta = static_cast<T>(eta_);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    T theta0 = load(b, i);
    T step = direction<ADAPTIVE>(T(load(x, i)), theta0, T(load(g, i)), cd, cg, eta);
    step = step + wd * theta0;
    if constexpr (MOMENTUM) {
      T m;
      if constexpr (INIT) m = step;
      else m = mom * load(buf, i) + keep * step;
      store(buf, i, m);
      if constexpr (NESTEROV) step = step + mom * m;
      else step = m;
    }
    store(p, i, theta0 - lr * step);
  }
}

template <typename S, bool ADAPTIVE>
void sgd_variant(S* p, const S* x, const S* b, const S* g, S* buf, double cd, double cg,
                 const SgdArgs& a, double eta, int64_t n) {
  if (!a.with_momentum)
    return sgd_loop<S, false, false, false, ADAPTIVE>(p, x, b, g, buf, cd, cg, a, eta, n);
  if (a.init_bufs) {
    if (a.nesterov)
      return sgd_loop<S, true, true, true, ADAPTIVE>(p, x, b, g, buf, cd, cg, a, eta, n);
    return sgd_loop<S, true, true, false, ADAPTIVE>(p, x, b, g, buf, cd, cg, a, eta, n);
  }
  if (a.nesterov)
    return sgd_loop<S, true, false, true, ADAPTIVE>(p, x, b, g, buf, cd, cg, a, eta, n);
  sgd_loop<S, true, false, false, ADAPTIVE>(p, x, b, g, buf, cd, cg, a, eta, n);
}

template <typename S>
void sgd(void* p_, const void* x_, const void* b_, const void* g_, void* buf_, double cd,
         double cg, const SgdArgs& a, const Geometry& geo, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  S* buf = static_cast<S*>(buf_);
  if (geo.adaptive) return sgd_variant<S, true>(p, x, b, g, buf, cd, cg, a, geo.eta, n);
  sgd_variant<S, false>(p, x, b, g, buf, cd, cg, a, 0.0, n);
}

// a * b + c with one rounding, as torch's vectorised lerp computes it (vec::fmadd).
// Without FMA hardware (the generic build): float via an exact double product,
// double via libm.
inline float fused(float a, float b, float c) {
#if XSAM_HAS_FMA
  return std::fma(a, b, c);
#else
  return static_cast<float>(static_cast<double>(a) * b + c);
#endif
}
inline double fused(double a, double b, double c) { return std::fma(a, b, c); }

// torch's lerp(m, G, w) = fma(w, G - m, m) for w < 0.5, else fma(w - 1, G - m, G); the
// difference matters where m and G nearly cancel.
template <typename S, bool LERP_SMALL, bool ADAPTIVE>
void adam_loop(S* p, const S* x, const S* b, const S* g, S* m, S* v, double cd_, double cg_,
               const AdamArgs& a, double eta_, int64_t n) {
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(a.maximize ? -cd_ : cd_);
  const T cg = static_cast<T>(a.maximize ? -cg_ : cg_);
  // decoupled decay scales theta_0 (by 1 when off); L2 decay adds l2 * theta_0 (0 when off)
  const T decay = static_cast<T>(a.decoupled ? 1.0 - a.lr * a.weight_decay : 1.0);
  const T l2 = static_cast<T>(a.decoupled ? 0.0 : a.weight_decay);
  const T w1 = static_cast<T>(1.0 - a.beta1), w1_minus_1 = w1 - T(1);
  const T beta2 = static_cast<T>(a.beta2), w2 = static_cast<T>(1.0 - a.beta2);
  const T eps = static_cast<T>(a.eps), step_size = static_cast<T>(a.step_size);
  const T bc2 = static_cast<T>(a.bias_correction2_sqrt), eta = static_cast<T>(eta_);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    T theta = load(b, i);
    T step = direction<ADAPTIVE>(T(load(x, i)), theta, T(load(g, i)), cd, cg, eta);
    step = step + l2 * theta;
    theta = theta * decay;
    T mv = load(m, i);
    if constexpr (LERP_SMALL) mv = fused(w1, step - mv, mv);
    else mv = fused(w1_minus_1, step - mv, step);
    T vv = beta2 * load(v, i) + w2 * step * step;
    store(m, i, mv);
    store(v, i, vv);
    store(p, i, theta - step_size * mv / (std::sqrt(vv) / bc2 + eps));
  }
}

template <typename S>
void adam(void* p_, const void* x_, const void* b_, const void* g_, void* m_, void* v_,
          double cd, double cg, const AdamArgs& a, const Geometry& geo, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  S* m = static_cast<S*>(m_);
  S* v = static_cast<S*>(v_);
  // torch's test of the lerp weight, on the weight in the math type
  using T = typename Math<S>::T;
  const bool small = std::abs(static_cast<T>(1.0 - a.beta1)) < T(0.5);
  if (geo.adaptive) {
    if (small) return adam_loop<S, true, true>(p, x, b, g, m, v, cd, cg, a, geo.eta, n);
    return adam_loop<S, false, true>(p, x, b, g, m, v, cd, cg, a, geo.eta, n);
  }
  if (small) return adam_loop<S, true, false>(p, x, b, g, m, v, cd, cg, a, 0.0, n);
  adam_loop<S, false, false>(p, x, b, g, m, v, cd, cg, a, 0.0, n);
}

template <typename S>
Kernels make_kernels() {
  return Kernels{&sumsq<S>, &backup_ascent<S>, &final_sums<S>, &write_point<S>,
                 &write_grad_restore<S>, &sgd<S>, &adam<S>};
}

}  // namespace

const Kernels& kernels(DType dtype) {
  static const Kernels table[4] = {make_kernels<float>(), make_kernels<double>(),
                                   make_kernels<BF16>(), make_kernels<F16>()};
  return table[static_cast<int>(dtype)];
}

}  // namespace XSAM_ISA
}  // namespace xsam_cpu
