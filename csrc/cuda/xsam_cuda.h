// The CUDA backend's phases, one call per phase per tensor list (see
// xsam_fast/backends/base.py for the semantics; `eta`: none for plain XSAM, else
// ASAM's offset in T = |theta_0| + eta). Defined in xsam_kernels.cu,
// bound to Python in bindings.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

namespace xsam_cuda {

using TensorList = std::vector<at::Tensor>;

at::Tensor sumsq(const TensorList& tensors, const TensorList& weights, std::optional<double> eta);

void backup_ascent(const TensorList& params, const TensorList& grads, const TensorList& backups,
                   const at::Tensor& scale, bool backup, std::optional<double> eta);

at::Tensor final_sums(const TensorList& points, const TensorList& backups,
                      const TensorList& grads, std::optional<double> eta);

void write_point(const TensorList& out, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const at::Tensor& coeffs, std::optional<double> eta);

void write_grad_restore(const TensorList& params, const TensorList& points,
                        const TensorList& backups, const TensorList& grads,
                        const at::Tensor& coeffs, std::optional<double> eta);

void sgd_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                const TensorList& grads, const TensorList& bufs, const at::Tensor& coeffs,
                double lr, double weight_decay, double momentum, double dampening, bool nesterov,
                bool maximize, bool init_bufs, std::optional<double> eta);

void adam_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const TensorList& exp_avgs,
                 const TensorList& exp_avg_sqs, const at::Tensor& coeffs, double lr, double beta1,
                 double beta2, double eps, double weight_decay, bool decoupled, bool maximize,
                 double step_size, double bias_correction2_sqrt, std::optional<double> eta);

// Kernel launches issued by this extension since it was loaded (for tests).
int64_t launch_count();

}  // namespace xsam_cuda
