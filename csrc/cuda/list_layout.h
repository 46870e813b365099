// The layout of a packed tensor list: device, dtype, shapes, strides and the work items
// of its tensors, checked once when the list is packed (base.py, Backend.pack), and the
// check that the lists of a phase line up. Host C++ without torch library symbols: the
// extension fills TensorDesc from at::Tensor, the host emulation from Python.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtype_dispatch.h"
#include "work_table.h"

namespace xsam_cuda {

// Tensors a backend cannot step together; the extension raises it as
// xsam_fast.backends.packed.LayoutError.
struct LayoutError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Throws an E whose message is made of `parts`.
template <typename E, typename... X>
[[noreturn]] void throw_with(const X&... parts) {
  std::ostringstream msg;
  (msg << ... << parts);
  throw E(msg.str());
}

template <typename... X>
[[noreturn]] void layout_fail(const X&... parts) {
  throw_with<LayoutError>(parts...);
}

// What packing needs to know of one tensor.
struct TensorDesc {
  int64_t device;          // device index
  int dtype;               // a Dtype code, or -1 for a dtype the backend does not step
  const char* dtype_name;  // for messages
  int64_t ndim;
  const int64_t* sizes;
  const int64_t* strides;
};

class Layout {
 public:
  // The layout of tensors `t[0..n)`: one device and one supported dtype, each dense and
  // non-overlapping (stepped in memory order over [data_ptr, data_ptr + numel)). With
  // `like`, tensor i must have like's device, dtype, shape and strides, and the result is
  // `like` itself (its work items are shared). Throws LayoutError.
  static std::shared_ptr<const Layout> of(const TensorDesc* t, int64_t n,
                                          const std::shared_ptr<const Layout>& like) {
    if (like) {
      if (n != like->size()) layout_fail(n, " tensors, ", like->size(), " expected");
      for (int64_t i = 0; i < n; ++i) like->check_like(t[i], i);
      return like;
    }
    auto layout = std::shared_ptr<Layout>(new Layout());
    for (int64_t i = 0; i < n; ++i) {
      const TensorDesc& d = t[i];
      if (d.dtype < 0)
        layout_fail("tensor ", i, " is a ", d.dtype_name, " tensor; the cuda backend steps ",
                    "float32, float64, float16 and bfloat16");
      if (i > 0 && (d.device != t[0].device || d.dtype != t[0].dtype))
        layout_fail("tensor ", i, " is a ", d.dtype_name, " tensor on device ", d.device,
                    ", the first a ", t[0].dtype_name, " tensor on device ", t[0].device);
      if (!dense_and_non_overlapping(d))
        layout_fail("tensor ", i, " (shape ", dims(d.sizes, d.ndim), ", strides ",
                    dims(d.strides, d.ndim), ") is not dense and non-overlapping");
      layout->sizes_.emplace_back(d.sizes, d.sizes + d.ndim);
      layout->strides_.emplace_back(d.strides, d.strides + d.ndim);
      int64_t numel = 1;
      for (int64_t k = 0; k < d.ndim; ++k) numel *= d.sizes[k];
      layout->numels_.push_back(numel);
    }
    if (n > 0) {
      layout->device_ = t[0].device;
      layout->dtype_ = static_cast<Dtype>(t[0].dtype);
    }
    layout->items_ = plan_work(layout->numels_);
    return layout;
  }

  int64_t size() const { return static_cast<int64_t>(numels_.size()); }
  // the device index (-1 for an empty list)
  int64_t device() const { return device_; }
  // the element type (float32 for an empty list, which has none)
  Dtype dtype() const { return dtype_; }
  const std::vector<WorkItem>& items() const { return items_; }

  // Same device, dtype, shapes and strides: element i of one list is element i of the
  // other in memory order.
  bool same_as(const Layout& o) const {
    return this == &o || (device_ == o.device_ && dtype_ == o.dtype_ && sizes_ == o.sizes_ &&
                          strides_ == o.strides_);
  }

  // Throws LayoutError unless every list lines up with the first (names[0]).
  static void check_line_up(const char* phase, const Layout* const* layouts,
                            const char* const* names, int count) {
    for (int k = 1; k < count; ++k) {
      const Layout& a = *layouts[0];
      const Layout& b = *layouts[k];
      if (a.same_as(b)) continue;
      if (a.size() != b.size())
        layout_fail(phase, ": ", names[k], " has ", b.size(), " tensors, ", names[0], " has ",
                    a.size());
      layout_fail(phase, ": ", names[k], " does not line up with ", names[0],
                  " (device, dtype, shapes and strides must agree tensor by tensor)");
    }
  }

 private:
  Layout() = default;

  // torch's is_non_overlapping_and_dense: the dims of size >= 2, ordered by stride, have
  // the strides of a contiguous tensor (so the elements fill [data_ptr, data_ptr + numel)).
  static bool dense_and_non_overlapping(const TensorDesc& d) {
    std::vector<int64_t> perm(static_cast<size_t>(d.ndim));
    for (int64_t k = 0; k < d.ndim; ++k) perm[k] = k;
    std::sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
      if (d.sizes[a] < 2) return false;
      if (d.sizes[b] < 2) return true;
      return d.strides[a] < d.strides[b];
    });
    int64_t expected = 1;
    for (const int64_t k : perm) {
      if (d.sizes[k] < 2) return true;
      if (d.strides[k] != expected) return false;
      expected *= d.sizes[k];
    }
    return true;
  }

  static std::string dims(const int64_t* v, int64_t n) {
    std::ostringstream s;
    s << "(";
    for (int64_t k = 0; k < n; ++k) s << (k ? ", " : "") << v[k];
    s << (n == 1 ? ",)" : ")");
    return s.str();
  }

  void check_like(const TensorDesc& d, int64_t i) const {
    const std::vector<int64_t>& sizes = sizes_[i];
    const std::vector<int64_t>& strides = strides_[i];
    const int64_t ndim = static_cast<int64_t>(sizes.size());
    const bool same = d.device == device_ && d.dtype == static_cast<int>(dtype_) &&
                      std::vector<int64_t>(d.sizes, d.sizes + d.ndim) == sizes &&
                      std::vector<int64_t>(d.strides, d.strides + d.ndim) == strides;
    if (!same)
      layout_fail("tensor ", i, ": shape ", dims(d.sizes, d.ndim), ", strides ",
                  dims(d.strides, d.ndim), ", ", d.dtype_name, " on device ", d.device,
                  "; expected ", dims(sizes.data(), ndim), ", ", dims(strides.data(), ndim),
                  ", ", dtype_name(dtype_), " on device ", device_);
  }

  int64_t device_ = -1;
  Dtype dtype_ = Dtype::kFloat32;
  std::vector<std::vector<int64_t>> sizes_, strides_;
  std::vector<int64_t> numels_;
  std::vector<WorkItem> items_;
};

// A packed list as a phase sees it: its layout and its tables, in the memory the kernels
// read (device memory in the extension, host memory in the emulation).
struct ListView {
  const Layout* layout;
  const int64_t* ptrs;    // one address per tensor
  const WorkItem* items;  // the layout's work items
};

}  // namespace xsam_cuda
