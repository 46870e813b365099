// Elementwise XSAM kernels over one contiguous chunk, on raw pointers.
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

template <typename S>
void sgd(void* p_, const void* x_, const void* b_, const void* g_, void* buf_, double cd_,
         double cg_, const SgdArgs& a, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  S* buf = static_cast<S*>(buf_);
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(a.maximize ? -cd_ : cd_);
  const T cg = static_cast<T>(a.maximize ? -cg_ : cg_);
  const T lr = static_cast<T>(a.lr), wd = static_cast<T>(a.weight_decay);
  const T mom = static_cast<T>(a.momentum), keep = static_cast<T>(1.0 - a.dampening);
  for (int64_t i = 0; i < n; ++i) {
    T theta0 = load(b, i);
    T step = cd * (load(x, i) - theta0) + cg * load(g, i);
    if (a.weight_decay != 0.0) step = step + wd * theta0;
    if (a.momentum != 0.0) {
      T m = a.init_bufs ? step : mom * load(buf, i) + keep * step;
      store(buf, i, m);
      step = a.nesterov ? step + mom * m : m;
    }
    store(p, i, theta0 - lr * step);
  }
}

template <typename S>
void adam(void* p_, const void* x_, const void* b_, const void* g_, void* m_, void* v_,
          double cd_, double cg_, const AdamArgs& a, int64_t n) {
  S* p = static_cast<S*>(p_);
  const S* x = static_cast<const S*>(x_);
  const S* b = static_cast<const S*>(b_);
  const S* g = static_cast<const S*>(g_);
  S* m = static_cast<S*>(m_);
  S* v = static_cast<S*>(v_);
  using T = typename Math<S>::T;
  const T cd = static_cast<T>(a.maximize ? -cd_ : cd_);
  const T cg = static_cast<T>(a.maximize ? -cg_ : cg_);
  const T wd = static_cast<T>(a.weight_decay), decay = static_cast<T>(1.0 - a.lr * a.weight_decay);
  const T w1 = static_cast<T>(1.0 - a.beta1), beta2 = static_cast<T>(a.beta2);
  const T w2 = static_cast<T>(1.0 - a.beta2), eps = static_cast<T>(a.eps);
  const T step_size = static_cast<T>(a.step_size), bc2 = static_cast<T>(a.bias_correction2_sqrt);
  const T beta1 = static_cast<T>(a.beta1);
  const bool decoupled = a.decoupled, has_wd = a.weight_decay != 0.0;
  const bool lerp_small = (1.0 - a.beta1) < 0.5;
  for (int64_t i = 0; i < n; ++i) {
    T theta = load(b, i);
    T step = cd * (load(x, i) - theta) + cg * load(g, i);
    if (has_wd) {
      if (decoupled) theta = theta * decay;
      else step = step + wd * theta;
    }
    T mv = load(m, i);
    // lerp(m, G, 1 - beta1) with torch's two formulas (exact at both ends)
    mv = lerp_small ? mv + w1 * (step - mv) : step - (step - mv) * beta1;
    T vv = beta2 * load(v, i) + w2 * step * step;
    store(m, i, mv);
    store(v, i, vv);
    store(p, i, theta - step_size * mv / (std::sqrt(vv) / bc2 + eps));
  }
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
