// A list of CPU tensors packed once (xsam_fast/backends/base.py, Backend.pack): checked
// when packed, and holding what every phase call on it reuses, so that a call converts,
// checks and plans nothing per tensor beyond reading each tensor's data pointer.
//
// Tensors are dense and non-overlapping (any dense permutation of the dimensions, e.g.
// channels_last), so tensor i of n elements occupies exactly [data_i, data_i + n) and is
// stepped in memory order. Lists packed `like` another share its shapes and strides index
// for index, hence its Layout object: element k of tensor i is then the same logical
// element in every list of a call.
#pragma once

#include <memory>
#include <stdexcept>
#include <vector>

#include <ATen/ATen.h>

namespace xsam_cpu {

// Tensors that cannot be stepped together (device, dtype, shape, strides, density);
// Python sees xsam_fast.backends.base.LayoutError (bindings.cpp).
class LayoutError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Elements per work item: small tensors share an item, big ones span several.
constexpr int64_t kItem = 1 << 15;

// Elements [start, start + len) of tensor `tensor`, in memory order.
struct Segment {
  int64_t tensor, start, len;
};

// What lists packed like one another share: dtype, shapes and strides, and the work-item
// plan (item i holds segments [first[i], first[i + 1])).
struct Layout {
  at::ScalarType dtype = at::ScalarType::Undefined;  // Undefined for an empty list
  std::vector<at::DimVector> sizes, strides;
  std::vector<Segment> segments;
  std::vector<int64_t> first{0};
  int64_t items() const { return static_cast<int64_t>(first.size()) - 1; }
  int64_t tensors() const { return static_cast<int64_t>(sizes.size()); }
};

// Hidden, as pybind11's own types are: a bound class must not be more visible than them.
class __attribute__((visibility("hidden"))) PackedList {
 public:
  // Checks `tensors` (one CPU device, one supported dtype, dense and non-overlapping; with
  // `like`: its length, dtype, shapes and strides) and raises LayoutError otherwise.
  PackedList(std::vector<at::Tensor> tensors, const PackedList* like);

  int64_t size() const { return static_cast<int64_t>(tensors_.size()); }
  const std::vector<at::Tensor>& tensors() const { return tensors_; }
  const Layout& layout() const { return *layout_; }

  // Raises LayoutError unless this list can be stepped with `first` (argument `name` of
  // `op`): free when it was packed like `first`, O(tensors) otherwise.
  void check_matches(const PackedList& first, const char* op, const char* name) const;

  // The address of element 0 (in memory order) of every tensor. A tensor whose data moved
  // since packing (`p.data = ...`, a copy-on-write materialised) is taken at its new
  // address if it still has the packed dtype, shape and strides; LayoutError otherwise.
  char* const* data();

 private:
  void repoint(int64_t i, char* now);

  std::vector<at::Tensor> tensors_;
  std::shared_ptr<const Layout> layout_;
  std::vector<char*> data_;
};

}  // namespace xsam_cpu
