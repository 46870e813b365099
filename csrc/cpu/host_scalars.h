// The small tensors of a call, checked and read or written on the host (they are CPU
// memory): the device-scalar vector `sc` and a bucket's `hyper` (float64, base.py), the
// `out` slots of a reduction, a coefficient pair, and Adam's per-tensor step counts.
#pragma once

#include <array>
#include <vector>

#include <ATen/ATen.h>

#include "../common/step_scalars.h"

namespace xsam_cpu {

// `sc`: a contiguous float64 CPU tensor of xsam_scalars::kNumScalars entries.
double* scalars_of(const at::Tensor& sc);
// `hyper`: a contiguous float64 CPU tensor of xsam_scalars::kNumHyper entries.
const double* hyper_of(const at::Tensor& hyper);

// The K float64 slots a reduction writes (a 1-d view of `sc`, any stride; 0-d for K = 1).
class SumsOut {
 public:
  SumsOut(const at::Tensor& out, int64_t k, const char* op);
  // slot k = total, or += total with `accumulate`
  void put(int64_t k, double total, bool accumulate) const {
    double& slot = p_[k * stride_];
    slot = accumulate ? slot + total : total;
  }

 private:
  double* p_;
  int64_t stride_;
};

// The two values of a 1-d CPU tensor of any float dtype, as double.
std::array<double, 2> pair_of(const at::Tensor& coeffs, const char* op);

// Adam's step size and sqrt(bias correction 2) of every tensor, in double, from `steps`
// (1-d float32 or float64 CPU tensor, one step count per tensor) and `hyper`.
std::vector<xsam_scalars::AdamStep> adam_steps(const at::Tensor& steps, int64_t tensors,
                                               const double* hyper);

}  // namespace xsam_cpu
