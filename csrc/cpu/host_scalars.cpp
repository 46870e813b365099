#include "host_scalars.h"

#include <c10/util/Exception.h>

namespace xsam_cpu {
namespace {

void check_vector(const at::Tensor& t, int64_t n, const char* what) {
  TORCH_CHECK_VALUE(t.device().is_cpu() && t.scalar_type() == at::kDouble && t.dim() == 1 &&
                        t.numel() == n && t.is_contiguous(),
                    what, " must be a contiguous 1-d float64 CPU tensor of ", n,
                    " values; got ", t.scalar_type(), " shape ", t.sizes(), " strides ",
                    t.strides(), " on ", t.device());
}

// element i of a 1-d tensor of any float dtype, as double
double element(const at::Tensor& t, int64_t i) {
  const int64_t at = i * t.stride(0);
  switch (t.scalar_type()) {
    case at::kDouble: return t.const_data_ptr<double>()[at];
    case at::kFloat: return t.const_data_ptr<float>()[at];
    case at::kBFloat16: return static_cast<float>(t.const_data_ptr<at::BFloat16>()[at]);
    case at::kHalf: return static_cast<float>(t.const_data_ptr<at::Half>()[at]);
    default: TORCH_CHECK_VALUE(false, "expected a float tensor, got ", t.scalar_type());
  }
}

}  // namespace

double* scalars_of(const at::Tensor& sc) {
  check_vector(sc, xsam_scalars::kNumScalars, "the device-scalar vector sc");
  return sc.data_ptr<double>();
}

const double* hyper_of(const at::Tensor& hyper) {
  check_vector(hyper, xsam_scalars::kNumHyper, "hyper");
  return hyper.const_data_ptr<double>();
}

SumsOut::SumsOut(const at::Tensor& out, int64_t k, const char* op) {
  TORCH_CHECK_VALUE(out.device().is_cpu() && out.scalar_type() == at::kDouble &&
                        out.dim() <= 1 && out.numel() == k,
                    op, ": out must be a 1-d float64 CPU tensor of ", k, " values; got ",
                    out.scalar_type(), " shape ", out.sizes(), " on ", out.device());
  p_ = out.data_ptr<double>();
  stride_ = out.dim() == 0 ? 0 : out.stride(0);
}

std::array<double, 2> pair_of(const at::Tensor& coeffs, const char* op) {
  TORCH_CHECK_VALUE(coeffs.device().is_cpu() && coeffs.dim() == 1 && coeffs.numel() == 2,
                    op, ": coeffs must be a 1-d CPU tensor of 2 values; got shape ",
                    coeffs.sizes(), " on ", coeffs.device());
  return {element(coeffs, 0), element(coeffs, 1)};
}

std::vector<xsam_scalars::AdamStep> adam_steps(const at::Tensor& steps, int64_t tensors,
                                               const double* hyper) {
  TORCH_CHECK_VALUE(steps.device().is_cpu() && steps.dim() == 1 && steps.numel() == tensors &&
                        (steps.scalar_type() == at::kFloat || steps.scalar_type() == at::kDouble),
                    "adam_update: steps must be a 1-d float32 or float64 CPU tensor of one "
                    "step count per tensor (", tensors, "); got ", steps.scalar_type(),
                    " shape ", steps.sizes(), " on ", steps.device());
  const double lr = hyper[xsam_scalars::kLr], beta1 = hyper[xsam_scalars::kBeta1];
  const double beta2 = hyper[xsam_scalars::kBeta2];
  const void* base = steps.const_data_ptr();
  const int64_t stride = steps.stride(0);
  const bool f64 = steps.scalar_type() == at::kDouble;
  std::vector<xsam_scalars::AdamStep> out;
  out.reserve(tensors);
  double previous = 0.0;
  for (int64_t i = 0; i < tensors; ++i) {
    const double step = f64 ? static_cast<const double*>(base)[i * stride]
                            : static_cast<const float*>(base)[i * stride];
    // the tensors of a bucket usually share their step count: two pow calls per bucket
    if (i > 0 && step == previous) out.push_back(out.back());
    else out.push_back(xsam_scalars::adam_step(lr, beta1, beta2, step));
    previous = step;
  }
  return out;
}

}  // namespace xsam_cpu
