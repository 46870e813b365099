// The fused XSAM phases on lists of CPU tensors: one call per phase for a whole
// bucket (same dtype), multi-threaded over fixed-size work items.
#pragma once

#include <vector>

#include <ATen/ATen.h>

namespace xsam_cpu {

using TensorList = std::vector<at::Tensor>;

at::Tensor sumsq(const TensorList& grads);
void backup_ascent(const TensorList& params, const TensorList& grads, const TensorList& backups,
                   const at::Tensor& scale, bool backup);
at::Tensor final_sums(const TensorList& points, const TensorList& backups, const TensorList& grads);
void write_point(const TensorList& out, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const at::Tensor& coeffs);
void write_grad_restore(const TensorList& params, const TensorList& points,
                        const TensorList& backups, const TensorList& grads,
                        const at::Tensor& coeffs);
void sgd_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                const TensorList& grads, const TensorList& bufs, const at::Tensor& coeffs,
                double lr, double weight_decay, double momentum, double dampening, bool nesterov,
                bool maximize, bool init_bufs);
void adam_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const TensorList& exp_avgs,
                 const TensorList& exp_avg_sqs, const at::Tensor& coeffs, double lr,
                 double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                 bool maximize, double step_size, double bias_correction2_sqrt);

// Name of the instruction set the kernels run with ("avx2" or "generic").
std::string isa();

}  // namespace xsam_cpu
