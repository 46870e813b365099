// The XSAM phases of xsam_fast/backends/base.py on packed lists of CPU tensors: one call
// per phase for a whole bucket, multi-threaded over the work items planned at packing.
// Argument names, semantics and the ASAM `eta` are those of base.py; `sc` and `hyper` are
// float64 CPU tensors, read (and, by the *_scalars calls and the reductions' `out` views,
// written) on the host.
#pragma once

#include <optional>

#include <ATen/ATen.h>

#include "packed_list.h"

namespace xsam_cpu {

using Eta = std::optional<double>;

void sumsq(PackedList& grads, const at::Tensor& out, bool accumulate, PackedList* weights,
           Eta eta);
void final_sums(PackedList& points, PackedList& backups, PackedList& grads,
                const at::Tensor& out, bool accumulate, Eta eta);

void ascent_scalars(const at::Tensor& sc, bool first, bool check);
void update_scalars(const at::Tensor& sc, bool check);
void plain_scalars(const at::Tensor& sc, bool check);

void backup_ascent(PackedList& params, PackedList& grads, PackedList& backups,
                   const at::Tensor& sc, const at::Tensor& hyper, bool backup, Eta eta);
void write_point(PackedList& out, PackedList& points, PackedList& backups, PackedList& grads,
                 const at::Tensor& coeffs, Eta eta);
void write_grad_restore(PackedList& params, PackedList& points, PackedList& backups,
                        PackedList& grads, const at::Tensor& coeffs, Eta eta);
void sgd_update(PackedList& params, PackedList& points, PackedList& backups, PackedList& grads,
                PackedList* bufs, const at::Tensor& sc, const at::Tensor& hyper,
                bool weight_decay, bool momentum, bool nesterov, bool maximize, bool init_bufs,
                Eta eta);
void adam_update(PackedList& params, PackedList& points, PackedList& backups, PackedList& grads,
                 PackedList& exp_avgs, PackedList& exp_avg_sqs, const at::Tensor& steps,
                 const at::Tensor& sc, const at::Tensor& hyper, bool weight_decay,
                 bool decoupled, bool maximize, Eta eta);

}  // namespace xsam_cpu
