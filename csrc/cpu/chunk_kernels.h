// Elementwise XSAM kernels over one contiguous chunk, on raw pointers.
//
// An output may alias an input only index for index (params and points are often
// the same tensor), so no loop carries a dependence from one element to the next;
// `#pragma GCC ivdep` says so where the compiler would otherwise give up.
//
// This header is compiled twice, once per instruction set (chunk_kernels_avx2.cpp,
// chunk_kernels_generic.cpp), inside the namespace named by XSAM_ISA. It includes
// no torch header, so that no inline function is compiled for two ISAs under one
// name. Storage types: float, double, uint16_t (bfloat16 bits), _Float16.
// Math runs in float (double for double); 16-bit values are rounded to nearest
// even once, when stored. Sums accumulate in double.
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

template <typename S> struct Math { using T = float; };
template <> struct Math<double> { using T = double; };

inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }
inline float load(const _Float16* p, int64_t i) { return static_cast<float>(p[i]); }
inline float load(const BF16* p, int64_t i) {
  uint32_t u = static_cast<uint32_t>(p[i].bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(double* p, int64_t i, double v) { p[i] = v; }
inline void store(_Float16* p, int64_t i, float v) { p[i] = static_cast<_Float16>(v); }
inline void store(BF16* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  // round to nearest even; NaN stays a (quiet) NaN
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  p[i].bits = static_cast<uint16_t>(std::isnan(v) ? 0x7FC0u : rounded);
}

template <typename S>
void sumsq(const void* g_, int64_t n, double* out) {
  const S* g = static_cast<const S*>(g_);
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    double v = load(g, i);
    s += v * v;
  }
  out[0] = s;
}

template <typename S>
void final_sums(const void* x_, const void* b_, const void* g_, int64_t n, double* out) {
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  using T = typename Math<S>::T;
  double gg = 0.0, dd = 0.0, dg = 0.0;
#pragma omp simd reduction(+ : gg, dd, dg)
  for (int64_t i = 0; i < n; ++i) {
    double gv = load(g, i);
    double dv = static_cast<T>(load(x, i) - load(b, i));
    gg += gv * gv;
    dd += dv * dv;
    dg += dv * gv;
  }
  out[0] = gg;
  out[1] = dd;
  out[2] = dg;
}

template <typename S>
void backup_ascent(void* p_, const void* g_, void* b_, double scale_, bool backup, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* g = static_cast<const S*>(g_);
  S* b = static_cast<S*>(b_);
  using T = typename Math<S>::T;
  const T scale = static_cast<T>(scale_);
  if (backup) {
    for (int64_t i = 0; i < n; ++i) {
      T pv = load(p, i);
      store(b, i, pv);
      store(p, i, pv + scale * load(g, i));
    }
  } else {
    for (int64_t i = 0; i < n; ++i) store(p, i, load(p, i) + scale * load(g, i));
  }
}

template <typename S>
void write_point(void* out_, const void* x_, const void* b_, const void* g_, double cd_,
                 double cg_, int64_t n) {
  S* out = static_cast<S*>(out_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(cd_), cg = static_cast<T>(cg_);
  for (int64_t i = 0; i < n; ++i) {
    T bv = load(b, i);
    store(out, i, bv + (cd * (load(x, i) - bv) + cg * load(g, i)));
  }
}

template <typename S>
void write_grad_restore(void* p_, const void* x_, const void* b_, void* g_, double cd_,
                        double cg_, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  S* g = static_cast<S*>(g_);
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(cd_), cg = static_cast<T>(cg_);
  for (int64_t i = 0; i < n; ++i) {
    T bv = load(b, i);
    store(g, i, cd * (load(x, i) - bv) + cg * load(g, i));
    store(p, i, bv);
  }
}

// Switches that change the loop body are template parameters, so every variant
// is a straight loop the compiler vectorises. A weight decay of 0 adds 0 * theta_0,
// which leaves a finite step unchanged, as torch's skipped branch does.
template <typename S, bool MOMENTUM, bool INIT, bool NESTEROV>
void sgd_loop(S* p, const S* x, const S* b, const S* g, S* buf, double cd_, double cg_,
              const SgdArgs& a, int64_t n) {
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(a.maximize ? -cd_ : cd_);
  const T cg = static_cast<T>(a.maximize ? -cg_ : cg_);
  const T lr = static_cast<T>(a.lr), wd = static_cast<T>(a.weight_decay);
  const T mom = static_cast<T>(a.momentum), keep = static_cast<T>(1.0 - a.dampening);
  for (int64_t i = 0; i < n; ++i) {
    T theta0 = load(b, i);
    T step = cd * (load(x, i) - theta0) + cg * load(g, i) + wd * theta0;
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

template <typename S>
void sgd(void* p_, const void* x_, const void* b_, const void* g_, void* buf_, double cd,
         double cg, const SgdArgs& a, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  S* buf = static_cast<S*>(buf_);
  if (a.momentum == 0.0) return sgd_loop<S, false, false, false>(p, x, b, g, buf, cd, cg, a, n);
  if (a.init_bufs) {
    if (a.nesterov) return sgd_loop<S, true, true, true>(p, x, b, g, buf, cd, cg, a, n);
    return sgd_loop<S, true, true, false>(p, x, b, g, buf, cd, cg, a, n);
  }
  if (a.nesterov) return sgd_loop<S, true, false, true>(p, x, b, g, buf, cd, cg, a, n);
  return sgd_loop<S, true, false, false>(p, x, b, g, buf, cd, cg, a, n);
}

// torch's lerp(m, G, w) uses m + w (G - m) for w < 0.5 and G - (G - m)(1 - w) otherwise.
template <typename S, bool LERP_SMALL>
void adam_loop(S* p, const S* x, const S* b, const S* g, S* m, S* v, double cd_, double cg_,
               const AdamArgs& a, int64_t n) {
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(a.maximize ? -cd_ : cd_);
  const T cg = static_cast<T>(a.maximize ? -cg_ : cg_);
  // decoupled decay scales theta_0 (by 1 when off); L2 decay adds l2 * theta_0 (0 when off)
  const T decay = static_cast<T>(a.decoupled ? 1.0 - a.lr * a.weight_decay : 1.0);
  const T l2 = static_cast<T>(a.decoupled ? 0.0 : a.weight_decay);
  const T w1 = static_cast<T>(1.0 - a.beta1), beta1 = static_cast<T>(a.beta1);
  const T beta2 = static_cast<T>(a.beta2), w2 = static_cast<T>(1.0 - a.beta2);
  const T eps = static_cast<T>(a.eps), step_size = static_cast<T>(a.step_size);
  const T bc2 = static_cast<T>(a.bias_correction2_sqrt);
#pragma GCC ivdep
  for (int64_t i = 0; i < n; ++i) {
    T theta = load(b, i);
    T step = cd * (load(x, i) - theta) + cg * load(g, i) + l2 * theta;
    theta = theta * decay;
    T mv = load(m, i);
    if constexpr (LERP_SMALL) mv = mv + w1 * (step - mv);
    else mv = step - (step - mv) * beta1;
    T vv = beta2 * load(v, i) + w2 * step * step;
    store(m, i, mv);
    store(v, i, vv);
    store(p, i, theta - step_size * mv / (std::sqrt(vv) / bc2 + eps));
  }
}

template <typename S>
void adam(void* p_, const void* x_, const void* b_, const void* g_, void* m_, void* v_,
          double cd, double cg, const AdamArgs& a, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  S* m = static_cast<S*>(m_);
  S* v = static_cast<S*>(v_);
  if (1.0 - a.beta1 < 0.5) return adam_loop<S, true>(p, x, b, g, m, v, cd, cg, a, n);
  return adam_loop<S, false>(p, x, b, g, m, v, cd, cg, a, n);
}

template <typename S>
Kernels make_kernels() {
  return Kernels{&sumsq<S>, &backup_ascent<S>, &final_sums<S>, &write_point<S>,
                 &write_grad_restore<S>, &sgd<S>, &adam<S>};
}

}  // namespace

const Kernels& kernels(DType dtype) {
  static const Kernels table[4] = {make_kernels<float>(), make_kernels<double>(),
                                   make_kernels<BF16>(), make_kernels<_Float16>()};
  return table[static_cast<int>(dtype)];
}

}  // namespace XSAM_ISA
}  // namespace xsam_cpu
