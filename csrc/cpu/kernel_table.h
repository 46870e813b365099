// The per-chunk kernels of one instruction set, as a table of function pointers.
// Plain C++ (no torch headers): shared by the ISA-specific translation units and
// the multi-tensor launcher (ops.cpp), which picks a table at run time.
#pragma once

#include <cstdint>

namespace xsam_cpu {

enum class DType : int { Float = 0, Double = 1, BFloat16 = 2, Half = 3 };

// ASAM geometry of a call (base.py): T = |theta_0| + eta when `adaptive`, else T = 1.
struct Geometry {
  bool adaptive;
  double eta;
};

// `with_momentum` picks the momentum loop (base.py's `momentum` switch), whatever the
// value of `momentum`.
struct SgdArgs {
  double lr, weight_decay, momentum, dampening;
  bool with_momentum, nesterov, maximize, init_bufs;
};

struct AdamArgs {
  double lr, beta1, beta2, eps, weight_decay, step_size, bias_correction2_sqrt;
  bool decoupled, maximize;
};

// Every kernel works on elements [0, n) of already-offset pointers; reductions
// write double partial sums (1 or 3 of them) to `out`. `w` (sumsq) holds theta_0
// and is read only when the geometry is adaptive.
struct Kernels {
  void (*sumsq)(const void* g, const void* w, const Geometry& geo, int64_t n, double* out);
  void (*backup_ascent)(void* p, const void* g, void* b, double scale, bool backup,
                        const Geometry& geo, int64_t n);
  void (*final_sums)(const void* x, const void* b, const void* g, const Geometry& geo,
                     int64_t n, double* out);
  void (*write_point)(void* out, const void* x, const void* b, const void* g, double cd,
                      double cg, const Geometry& geo, int64_t n);
  void (*write_grad_restore)(void* p, const void* x, const void* b, void* g, double cd,
                             double cg, const Geometry& geo, int64_t n);
  void (*sgd)(void* p, const void* x, const void* b, const void* g, void* buf, double cd,
              double cg, const SgdArgs& args, const Geometry& geo, int64_t n);
  void (*adam)(void* p, const void* x, const void* b, const void* g, void* m, void* v,
               double cd, double cg, const AdamArgs& args, const Geometry& geo, int64_t n);
};

namespace generic { const Kernels& kernels(DType dtype); }
namespace avx2 { const Kernels& kernels(DType dtype); }
namespace avx512 { const Kernels& kernels(DType dtype); }

}  // namespace xsam_cpu
