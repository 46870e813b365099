// One functor per XSAM phase, for multi_tensor_kernel (multi_tensor_apply.cuh).
//
// Each functor names its DEPTH lists (in the launcher's order), the lists it
// reads and writes (bit masks), the number of sums it accumulates, and
// transforms the values of one element in place, in acc_t<T>. load_scalars()
// runs once per thread before any element (device-resident scalars).
// Semantics: xsam_fast/backends/base.py; the order of the floating-point
// operations follows xsam_fast/backends/reference.py.
// Host-callable as well, so that tests can run them without a GPU.
#pragma once

#include <cmath>

#include "multi_tensor_apply.cuh"

namespace xsam_cuda {

constexpr unsigned bit(int d) { return 1u << d; }

// ASAM geometry (ADAPTIVE functors, base.py): T = |theta_0| + eta, recomputed per
// element from theta_0; ops in base.py's order (t, then t * t once).
template <typename A>
__host__ __device__ __forceinline__ A asam_t(A theta0, A eta) {
  return (theta0 < A(0) ? -theta0 : theta0) + eta;
}

// Each functor names its DEPTH lists (in launcher order), the lists it reads
// and writes, the number of sums it accumulates, and transforms the values of
// one element in place. load_scalars() runs once per thread before any element.

// lists: (tensors[, weights]); sums: [x^2], ADAPTIVE: [(T x)^2], T from weights
template <typename T, bool ADAPTIVE = false>
struct SumSqOp {
  using A = acc_t<T>;
  static constexpr int kDepth = ADAPTIVE ? 2 : 1;
  static constexpr unsigned kReads = bit(0) | (ADAPTIVE ? bit(1) : 0u), kWrites = 0;
  static constexpr int kSums = 1;
  A eta;
  __host__ __device__ void load_scalars() {}
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

// lists: (params, grads[, backups]); backups <- params; params += scale * grads.
// ADAPTIVE: params += scale * (T*T * grads), T from theta_0: the params when backing
// up, else the backups (then read, always present).
template <typename T, bool BACKUP, bool ADAPTIVE = false>
struct AscentOp {
  using A = acc_t<T>;
  static constexpr int kDepth = BACKUP || ADAPTIVE ? 3 : 2;
  static constexpr unsigned kReads = bit(0) | bit(1) | (ADAPTIVE && !BACKUP ? bit(2) : 0u);
  static constexpr unsigned kWrites = bit(0) | (BACKUP ? bit(2) : 0u);
  static constexpr int kSums = 0;
  const A* scale_ptr;
  A scale;
  A eta;
  __host__ __device__ void load_scalars() { scale = *scale_ptr; }
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    A step = v[1];
    if constexpr (ADAPTIVE) {
      const A t = asam_t(BACKUP ? v[0] : v[2], eta);
      step = (t * t) * step;
    }
    if constexpr (BACKUP) v[2] = v[0];  // exact: a widened T converts back to itself
    v[0] = v[0] + scale * step;
  }
};

// lists: (points, backups, grads); sums: [g.g, d.d, d.g], d = points - backups;
// ADAPTIVE: [(T g)^2, (d / T)^2, d.g], T = |backups| + eta
template <typename T, bool ADAPTIVE = false>
struct FinalSumsOp {
  using A = acc_t<T>;
  static constexpr int kDepth = 3;
  static constexpr unsigned kReads = bit(0) | bit(1) | bit(2), kWrites = 0;
  static constexpr int kSums = 3;
  A eta;
  __host__ __device__ void load_scalars() {}
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

// The interpolated direction c_d (x - b) + c_g g, read from a device pair. With
// ADAPTIVE (T = |b| + eta): the update direction c_d (x - b) / (T*T) + c_g g, and the
// search point's step c_d (x - b) + c_g (T*T g).
template <typename A, bool ADAPTIVE = false>
struct Coeffs {
  const A* ptr;
  A cd, cg;
  A eta;
  __host__ __device__ __forceinline__ void load() {
    cd = ptr[0];
    cg = ptr[1];
  }
  __host__ __device__ __forceinline__ A direction(A x, A b, A g) const {
    A d = x - b;
    if constexpr (ADAPTIVE) {
      const A t = asam_t(b, eta);
      d = d / (t * t);
    }
    return cd * d + cg * g;
  }
  __host__ __device__ __forceinline__ A point_step(A x, A b, A g) const {
    if constexpr (ADAPTIVE) {
      const A t = asam_t(b, eta);
      g = (t * t) * g;
    }
    return cd * (x - b) + cg * g;
  }
};

// lists: (out, points, backups, grads); out = b + point_step
template <typename T, bool ADAPTIVE = false>
struct WritePointOp {
  using A = acc_t<T>;
  static constexpr int kDepth = 4;
  static constexpr unsigned kReads = bit(1) | bit(2) | bit(3), kWrites = bit(0);
  static constexpr int kSums = 0;
  Coeffs<A, ADAPTIVE> c;
  __host__ __device__ void load_scalars() { c.load(); }
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    v[0] = v[2] + c.point_step(v[1], v[2], v[3]);
  }
};

// lists: (params, points, backups, grads); grads <- direction; params <- backups
template <typename T, bool ADAPTIVE = false>
struct WriteGradRestoreOp {
  using A = acc_t<T>;
  static constexpr int kDepth = 4;
  static constexpr unsigned kReads = bit(1) | bit(2) | bit(3), kWrites = bit(0) | bit(3);
  static constexpr int kSums = 0;
  Coeffs<A, ADAPTIVE> c;
  __host__ __device__ void load_scalars() { c.load(); }
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    v[3] = c.direction(v[1], v[2], v[3]);
    v[0] = v[2];
  }
};

// lists: (params, points, backups, grads[, bufs]); torch.optim.SGD from theta_0.
// MOMENTUM: bufs present; INIT: buf = G (first step), else read and update it.
template <typename T, bool MOMENTUM, bool INIT, bool ADAPTIVE = false>
struct SgdOp {
  using A = acc_t<T>;
  static constexpr int kDepth = MOMENTUM ? 5 : 4;
  static constexpr unsigned kReads =
      bit(1) | bit(2) | bit(3) | (MOMENTUM && !INIT ? bit(4) : 0u);
  static constexpr unsigned kWrites = bit(0) | (MOMENTUM ? bit(4) : 0u);
  static constexpr int kSums = 0;
  Coeffs<A, ADAPTIVE> c;
  A lr, weight_decay, momentum, one_minus_dampening;
  bool nesterov, maximize;
  // hyper-parameters from Python floats; derived constants in double, as Python has them
  static SgdOp make(const A* coeffs, double lr, double weight_decay, double momentum,
                    double dampening, bool nesterov, bool maximize, double eta = 0.0) {
    SgdOp op{};
    op.c.ptr = coeffs;
    op.c.eta = static_cast<A>(eta);
    op.lr = static_cast<A>(lr);
    op.weight_decay = static_cast<A>(weight_decay);
    op.momentum = static_cast<A>(momentum);
    op.one_minus_dampening = static_cast<A>(1.0 - dampening);
    op.nesterov = nesterov;
    op.maximize = maximize;
    return op;
  }
  __host__ __device__ void load_scalars() { c.load(); }
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    const A theta0 = v[2];
    A step = c.direction(v[1], v[2], v[3]);
    if (maximize) step = -step;
    if (weight_decay != A(0)) step = step + weight_decay * theta0;
    if constexpr (MOMENTUM) {
      A buf;
      if constexpr (INIT)
        buf = step;
      else
        buf = momentum * v[4] + one_minus_dampening * step;
      v[4] = buf;
      step = nesterov ? step + momentum * buf : buf;
    }
    v[0] = theta0 - lr * step;
  }
};

// lists: (params, points, backups, grads, exp_avgs, exp_avg_sqs);
// torch.optim.Adam / AdamW (amsgrad off) from theta_0.
template <typename T, bool ADAPTIVE = false>
struct AdamOp {
  using A = acc_t<T>;
  static constexpr int kDepth = 6;
  static constexpr unsigned kReads = bit(1) | bit(2) | bit(3) | bit(4) | bit(5);
  static constexpr unsigned kWrites = bit(0) | bit(4) | bit(5);
  static constexpr int kSums = 0;
  Coeffs<A, ADAPTIVE> c;
  A one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, step_size,
      bias_correction2_sqrt;
  bool decoupled, maximize;
  // hyper-parameters from Python floats; derived constants in double, as Python has them
  static AdamOp make(const A* coeffs, double lr, double beta1, double beta2, double eps,
                     double weight_decay, bool decoupled, bool maximize, double step_size,
                     double bias_correction2_sqrt, double eta = 0.0) {
    AdamOp op{};
    op.c.ptr = coeffs;
    op.c.eta = static_cast<A>(eta);
    op.one_minus_beta1 = static_cast<A>(1.0 - beta1);
    op.beta2 = static_cast<A>(beta2);
    op.one_minus_beta2 = static_cast<A>(1.0 - beta2);
    op.eps = static_cast<A>(eps);
    op.weight_decay = static_cast<A>(weight_decay);
    op.decay_factor = static_cast<A>(1.0 - lr * weight_decay);
    op.step_size = static_cast<A>(step_size);
    op.bias_correction2_sqrt = static_cast<A>(bias_correction2_sqrt);
    op.decoupled = decoupled;
    op.maximize = maximize;
    return op;
  }
  __host__ __device__ void load_scalars() { c.load(); }
  // torch.lerp's formula (ATen/native/Lerp.h), for bit-compatibility
  __host__ __device__ __forceinline__ static A lerp(A start, A end, A weight) {
    return (weight < A(0.5) && weight > A(-0.5)) ? start + weight * (end - start)
                                                 : end - (end - start) * (A(1) - weight);
  }
  template <int S>
  __host__ __device__ __forceinline__ void operator()(A (&v)[kDepth], A (&)[S]) const {
    A theta = v[2];
    A step = c.direction(v[1], v[2], v[3]);
    if (maximize) step = -step;
    if (weight_decay != A(0)) {
      if (decoupled)
        theta = theta * decay_factor;
      else
        step = step + weight_decay * theta;
    }
    const A m = lerp(v[4], step, one_minus_beta1);
    const A s = beta2 * v[5] + one_minus_beta2 * step * step;
    v[4] = m;
    v[5] = s;
    v[0] = theta - step_size * m / (std::sqrt(s) / bias_correction2_sqrt + eps);
  }
};

}  // namespace xsam_cuda
