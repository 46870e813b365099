// The fused XSAM phases on lists of CPU tensors: one call per phase for a whole
// bucket (same dtype), multi-threaded over fixed-size work items. Semantics,
// argument names and the ASAM `eta` are those of xsam_fast/backends/base.py.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace xsam_cpu {

using TensorList = std::vector<at::Tensor>;
using Eta = std::optional<double>;

at::Tensor sumsq(const TensorList& grads, const std::optional<TensorList>& weights, Eta eta);
void backup_ascent(const TensorList& params, const TensorList& grads, const TensorList& backups,
                   const at::Tensor& scale, bool backup, Eta eta);
at::Tensor final_sums(const TensorList& points, const TensorList& backups,
                      const TensorList& grads, Eta eta);
void write_point(const TensorList& out, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const at::Tensor& coeffs, Eta eta);
void write_grad_restore(const TensorList& params, const TensorList& points,
                        const TensorList& backups, const TensorList& grads,
                        const at::Tensor& coeffs, Eta eta);
void sgd_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                const TensorList& grads, const TensorList& bufs, const at::Tensor& coeffs,
                double lr, double weight_decay, double momentum, double dampening, bool nesterov,
                bool maximize, bool init_bufs, Eta eta);
void adam_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const TensorList& exp_avgs,
                 const TensorList& exp_avg_sqs, const at::Tensor& coeffs, double lr,
                 double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                 bool maximize, double step_size, double bias_correction2_sqrt, Eta eta);

// Instruction set the kernels run with: "avx512", "avx2" or "generic".
std::string isa();
// Instruction sets this CPU can run, best first.
std::vector<std::string> supported_isas();
// Forces an instruction set ("auto": the best this CPU has); returns the one in use.
std::string set_isa(const std::string& name);

}  // namespace xsam_cpu
