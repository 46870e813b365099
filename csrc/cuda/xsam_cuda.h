// The CUDA backend's C++ interface: packed lists and one function per phase of the
// backend contract (xsam_fast/backends/base.py). Defined in xsam_kernels.cu (kernels,
// launches) and packed_list.cu (packing), bound to Python in bindings.cpp. No CUDA
// header here: bindings.cpp is compiled by the host compiler.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "list_layout.h"

namespace xsam_cuda {

struct CopyFence;  // a host-to-device copy and the stream it went to (packed_list.cu)

// A list of CUDA tensors packed for the kernels (base.py, Backend.pack): the tensors, their
// layout (work items), a device table of their addresses, and the layout's device work
// table, shared by every list packed like this one. The tables are copied from pinned
// memory without synchronising; a phase on another stream waits for the copies on the
// device. Hidden like pybind11's own types (it never leaves the extension).
class __attribute__((visibility("hidden"))) PackedList {
 public:
  // Checks the tensors (LayoutError) and builds the tables on their device.
  static std::shared_ptr<PackedList> make(std::vector<at::Tensor> tensors,
                                          const std::shared_ptr<PackedList>& like);

  int64_t size() const { return layout_->size(); }
  int64_t device() const { return layout_->device(); }
  int64_t num_items() const { return static_cast<int64_t>(layout_->items().size()); }
  const std::vector<at::Tensor>& tensors() const { return tensors_; }
  // Whether this list and `other` share one device work table (one was packed like the other).
  bool shares_work_table(const PackedList& other) const {
    return items_.is_same(other.items_) && items_.defined();
  }

  // The list for a phase on the current stream of its device (which then waits for the
  // table copies if they went to another stream).
  ListView view() const;

 private:
  std::vector<at::Tensor> tensors_;
  std::shared_ptr<const Layout> layout_;
  at::Tensor ptrs_;   // int64 addresses, on the device
  at::Tensor items_;  // the layout's WorkItems as int64 pairs, on the device
  std::shared_ptr<CopyFence> ptrs_fence_, items_fence_;
};

using ListPtr = std::shared_ptr<PackedList>;

// ---------------------------------------------------------------- phases (base.py)
void sumsq(const PackedList& grads, const at::Tensor& out, bool accumulate,
           const PackedList* weights, std::optional<double> eta);
void final_sums(const PackedList& points, const PackedList& backups, const PackedList& grads,
                const at::Tensor& out, bool accumulate, std::optional<double> eta);
void ascent_scalars(const at::Tensor& sc, bool first, bool check);
void update_scalars(const at::Tensor& sc, bool check);
void plain_scalars(const at::Tensor& sc, bool check);
void backup_ascent(const PackedList& params, const PackedList& grads, const PackedList& backups,
                   const at::Tensor& sc, const at::Tensor& hyper, bool backup,
                   std::optional<double> eta);
void write_point(const PackedList& out, const PackedList& points, const PackedList& backups,
                 const PackedList& grads, const at::Tensor& coeffs, std::optional<double> eta);
void write_grad_restore(const PackedList& params, const PackedList& points,
                        const PackedList& backups, const PackedList& grads,
                        const at::Tensor& coeffs, std::optional<double> eta);
void sgd_update(const PackedList& params, const PackedList& points, const PackedList& backups,
                const PackedList& grads, const PackedList* bufs, const at::Tensor& sc,
                const at::Tensor& hyper, bool weight_decay, bool momentum, bool nesterov,
                bool maximize, bool init_bufs, std::optional<double> eta);
void adam_update(const PackedList& params, const PackedList& points, const PackedList& backups,
                 const PackedList& grads, const PackedList& exp_avgs,
                 const PackedList& exp_avg_sqs, const at::Tensor& steps, const at::Tensor& sc,
                 const at::Tensor& hyper, bool weight_decay, bool decoupled, bool maximize,
                 std::optional<double> eta);

// ---------------------------------------------------------------- for tests
// Kernel launches issued since the extension was loaded.
int64_t launch_count();
// Grid (blocks) of the latest multi-tensor launch.
int64_t last_grid();
// Multiprocessors of `device` (queried once per device).
int sm_count(int device);

}  // namespace xsam_cuda
