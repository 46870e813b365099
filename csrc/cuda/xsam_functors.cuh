// One functor per XSAM phase, run by the chunk loop (chunk_loop.cuh) on every element.
//
// Each functor names its DEPTH lists (in the order of its comment), the lists it reads
// and writes (bit masks), the number of sums it accumulates, and transforms the values of
// one element in place, in acc_t<T>. Everything that changes from step to step is read
// from device memory: the float64 device scalars `sc` and the bucket's float64 `hyper`
// (indices in csrc/common/step_scalars.h), Adam's per-tensor `steps`. load() runs once per
// thread before any element (derived values in double, then cast to acc_t<T>, as the
// reference does); begin_item(tensor) once per work item. Python switches (momentum,
// Nesterov, maximize, ...) and ASAM's eta are fixed per launch.
// Semantics: xsam_fast/backends/base.py; the order of the floating-point operations
// follows xsam_fast/backends/reference.py. Host and device code.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/step_scalars.h"
#include "element_types.cuh"

namespace xsam_cuda {

namespace xs = xsam_scalars;

constexpr unsigned bit(int d) { return 1u << d; }

// ASAM's T = |theta_0| + eta (base.py, "Adaptive (ASAM) geometry"), per element.
template <typename A>
__host__ __device__ __forceinline__ A asam_t(A theta0, A eta) {
  return (theta0 < A(0) ? -theta0 : theta0) + eta;
}

// The interpolation with coefficients (c_d, c_g) read from device memory.
template <typename A, bool ADAPTIVE>
struct Interpolation {
  const double* coeffs;  // [c_d, c_g], float64
  A eta;
  A cd, cg;
  __host__ __device__ __forceinline__ void load() {
    cd = static_cast<A>(coeffs[0]);
    cg = static_cast<A>(coeffs[1]);
  }
  // the update direction G = c_d d + c_g g, d = x - b; ASAM: c_d q + c_g g,
  // q = d / (T*T), or 0 where T*T == 0
  __host__ __device__ __forceinline__ A direction(A x, A b, A g) const {
    A d = x - b;
    if constexpr (ADAPTIVE) {
      const A t = asam_t(b, eta);
      const A tt = t * t;
      d = tt != A(0) ? d / tt : A(0);
    }
    return cd * d + cg * g;
  }
  // the step of a search point from b: c_d d + c_g g; ASAM: c_d d + c_g (T*T g)
  __host__ __device__ __forceinline__ A point_step(A x, A b, A g) const {
    const A d = x - b;
    if constexpr (ADAPTIVE) {
      const A t = asam_t(b, eta);
      g = (t * t) * g;
    }
    return cd * d + cg * g;
  }
};

// The skip flag of the step (base.py, FOUND_INF), read once per thread.
__host__ __device__ __forceinline__ bool found_inf(const double* sc) {
  return sc[xs::kFoundInf] != 0.0;
}

// lists: (grads[, weights]); sums: [g^2]; ADAPTIVE: [(T g)^2], T from the weights (theta_0)
template <typename T, bool ADAPTIVE>
struct SumSqOp {
  using A = acc_t<T>;
  static constexpr int kDepth = ADAPTIVE ? 2 : 1;
  static constexpr unsigned kReads = bit(0) | (ADAPTIVE ? bit(1) : 0u), kWrites = 0;
  static constexpr int kSums = 1;
  A eta;
  __host__ __device__ void load() {}
  __host__ __device__ void begin_item(int32_t) {}
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&s)[S]) const {
    if constexpr (ADAPTIVE) {
      const A x = asam_t(v[1], eta) * v[0];
      s[0] += x * x;
    } else {
      s[0] += v[0] * v[0];
    }
  }
};

// lists: (points, backups, grads); sums: [g.g, d.d, d.g], d = points - backups;
// ADAPTIVE: [(T g)^2, (d / T)^2, d.g], T = |backups| + eta
template <typename T, bool ADAPTIVE>
struct FinalSumsOp {
  using A = acc_t<T>;
  static constexpr int kDepth = 3;
  static constexpr unsigned kReads = bit(0) | bit(1) | bit(2), kWrites = 0;
  static constexpr int kSums = 3;
  A eta;
  __host__ __device__ void load() {}
  __host__ __device__ void begin_item(int32_t) {}
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&s)[S]) const {
    const A d = v[0] - v[1];
    const A g = v[2];
    if constexpr (ADAPTIVE) {
      const A t = asam_t(v[1], eta);
      const A gu = t * g, du = d / t;
      s[0] += gu * gu;
      s[1] += du * du;
    } else {
      s[0] += g * g;
      s[1] += d * d;
    }
    s[2] += d * g;
  }
};

// lists: (params, grads[, backups]); backups <- params (BACKUP); params += scale * grads,
// scale = ascent_scale(sc, hyper[kRadius]) (0 once the step is skipped, when params do
// not move). ADAPTIVE: params += scale * (T*T * grads), T from theta_0: the params when
// backing up, else the backups (then read).
template <typename T, bool BACKUP, bool ADAPTIVE>
struct AscentOp {
  using A = acc_t<T>;
  static constexpr int kDepth = BACKUP || ADAPTIVE ? 3 : 2;
  static constexpr unsigned kReads = bit(0) | bit(1) | (ADAPTIVE && !BACKUP ? bit(2) : 0u);
  static constexpr unsigned kWrites = bit(0) | (BACKUP ? bit(2) : 0u);
  static constexpr int kSums = 0;
  const double* sc;
  const double* hyper;
  A eta;
  A scale;
  bool skip;
  __host__ __device__ void load() {
    skip = found_inf(sc);
    scale = static_cast<A>(xs::ascent_scale(sc, hyper[xs::kRadius]));
  }
  __host__ __device__ void begin_item(int32_t) {}
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    A step = v[1];
    if constexpr (ADAPTIVE) {
      const A t = asam_t(BACKUP ? v[0] : v[2], eta);
      step = (t * t) * step;
    }
    if constexpr (BACKUP) v[2] = v[0];  // exact: a widened T converts back to itself
    if (!skip) v[0] = v[0] + scale * step;
  }
};

// lists: (out, points, backups, grads); out = backups + interpolation step
template <typename T, bool ADAPTIVE>
struct WritePointOp {
  using A = acc_t<T>;
  static constexpr int kDepth = 4;
  static constexpr unsigned kReads = bit(1) | bit(2) | bit(3), kWrites = bit(0);
  static constexpr int kSums = 0;
  Interpolation<A, ADAPTIVE> c;
  __host__ __device__ void load() { c.load(); }
  __host__ __device__ void begin_item(int32_t) {}
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    v[0] = v[2] + c.point_step(v[1], v[2], v[3]);
  }
};

// lists: (params, points, backups, grads); grads <- G; params <- backups
template <typename T, bool ADAPTIVE>
struct WriteGradRestoreOp {
  using A = acc_t<T>;
  static constexpr int kDepth = 4;
  static constexpr unsigned kReads = bit(1) | bit(2) | bit(3), kWrites = bit(0) | bit(3);
  static constexpr int kSums = 0;
  Interpolation<A, ADAPTIVE> c;
  __host__ __device__ void load() { c.load(); }
  __host__ __device__ void begin_item(int32_t) {}
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    v[3] = c.direction(v[1], v[2], v[3]);
    v[0] = v[2];
  }
};

// lists: (params, points, backups, grads[, bufs]); torch.optim.SGD from theta_0 with the
// direction G of sc's coefficients. MOMENTUM: bufs present; INIT: buf = G (fresh buffers,
// not read), else buf = m buf + (1 - dampening) G. A skipped step writes theta_0 back and
// leaves the buffers as they were (fresh ones: 0).
template <typename T, bool MOMENTUM, bool INIT, bool ADAPTIVE>
struct SgdOp {
  using A = acc_t<T>;
  static constexpr int kDepth = MOMENTUM ? 5 : 4;
  static constexpr unsigned kReads =
      bit(1) | bit(2) | bit(3) | (MOMENTUM && !INIT ? bit(4) : 0u);
  static constexpr unsigned kWrites = bit(0) | (MOMENTUM ? bit(4) : 0u);
  static constexpr int kSums = 0;
  const double* sc;
  const double* hyper;
  bool weight_decay, nesterov, maximize;
  Interpolation<A, ADAPTIVE> c;
  A lr, wd, momentum, keep;
  bool skip;
  __host__ __device__ void load() {
    skip = found_inf(sc);
    c.coeffs = sc + xs::kCD;
    c.load();
    lr = static_cast<A>(hyper[xs::kLr]);
    wd = static_cast<A>(hyper[xs::kWeightDecay]);
    momentum = static_cast<A>(hyper[xs::kMomentum]);
    keep = static_cast<A>(1.0 - hyper[xs::kDampening]);
  }
  __host__ __device__ void begin_item(int32_t) {}
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    const A theta0 = v[2];
    A step = c.direction(v[1], v[2], v[3]);
    if (maximize) step = -step;
    if (weight_decay) step = step + wd * theta0;
    if constexpr (MOMENTUM) {
      const A buf = INIT ? step : momentum * v[4] + keep * step;
      step = nesterov ? step + momentum * buf : buf;
      v[4] = skip ? (INIT ? A(0) : v[4]) : buf;
    }
    v[0] = skip ? theta0 : theta0 - lr * step;
  }
};

// lists: (params, points, backups, grads, exp_avgs, exp_avg_sqs); torch.optim.Adam /
// AdamW (amsgrad off) from theta_0. Per tensor, from its entry of `steps` (float32 or
// float64): step_size and bias_correction2_sqrt by xsam_scalars::adam_step, in double.
// A skipped step writes theta_0 back and leaves the moments as they were.
template <typename T, bool ADAPTIVE>
struct AdamOp {
  using A = acc_t<T>;
  static constexpr int kDepth = 6;
  static constexpr unsigned kReads = bit(1) | bit(2) | bit(3) | bit(4) | bit(5);
  static constexpr unsigned kWrites = bit(0) | bit(4) | bit(5);
  static constexpr int kSums = 0;
  const double* sc;
  const double* hyper;
  const void* steps;
  bool steps_double;  // steps is float64, else float32
  bool weight_decay, decoupled, maximize;
  Interpolation<A, ADAPTIVE> c;
  A one_minus_beta1, beta2, one_minus_beta2, eps, wd, decay, step_size, bias_correction2_sqrt;
  bool skip;
  __host__ __device__ void load() {
    skip = found_inf(sc);
    c.coeffs = sc + xs::kCD;
    c.load();
    const double lr = hyper[xs::kLr], b1 = hyper[xs::kBeta1], b2 = hyper[xs::kBeta2];
    const double weight_decay_d = hyper[xs::kWeightDecay];
    one_minus_beta1 = static_cast<A>(1.0 - b1);
    beta2 = static_cast<A>(b2);
    one_minus_beta2 = static_cast<A>(1.0 - b2);
    eps = static_cast<A>(hyper[xs::kAdamEps]);
    wd = static_cast<A>(weight_decay_d);
    decay = static_cast<A>(1.0 - lr * weight_decay_d);
  }
  __host__ __device__ void begin_item(int32_t tensor) {
    const double step = steps_double
                            ? static_cast<const double*>(steps)[tensor]
                            : static_cast<double>(static_cast<const float*>(steps)[tensor]);
    const xs::AdamStep s =
        xs::adam_step(hyper[xs::kLr], hyper[xs::kBeta1], hyper[xs::kBeta2], step);
    step_size = static_cast<A>(s.step_size);
    bias_correction2_sqrt = static_cast<A>(s.bias_correction2_sqrt);
  }
  // torch.lerp as ATen computes it, on the CPU (vectorised: fmadd) and on the GPU
  // (contracted): its two formulas (ATen/native/Lerp.h) with one fused multiply-add,
  // start + w (end - start) for |w| < 0.5, else end + (w - 1) (end - start). Explicit,
  // so -fmad=false keeps it; bit-identical to the reference backend's torch.lerp.
  __host__ __device__ __forceinline__ static A lerp(A start, A end, A weight) {
    const A diff = end - start;
    return (weight < A(0.5) && weight > A(-0.5)) ? std::fma(weight, diff, start)
                                                 : std::fma(weight - A(1), diff, end);
  }
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    const A theta0 = v[2];
    A theta = theta0;
    A g = c.direction(v[1], v[2], v[3]);
    if (maximize) g = -g;
    if (weight_decay) {
      if (decoupled)
        theta = theta * decay;
      else
        g = g + wd * theta;
    }
    const A m = lerp(v[4], g, one_minus_beta1);
    const A s = beta2 * v[5] + one_minus_beta2 * g * g;
    if (skip) {
      v[0] = theta0;
      return;
    }
    v[4] = m;
    v[5] = s;
    v[0] = theta - step_size * m / (std::sqrt(s) / bias_correction2_sqrt + eps);
  }
};

}  // namespace xsam_cuda
