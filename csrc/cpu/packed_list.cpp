// Packing: the checks of base.py (Backend.pack) and the work-item plan, once per list.
#include "packed_list.h"

#include <string>

#include <c10/util/StringUtil.h>

namespace xsam_cpu {
namespace {

bool supported(at::ScalarType st) {
  return st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf;
}

// dtype as Python spells it (float32, ...)
std::string name_of(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return c10::toString(st);
  }
}

std::string describe(at::ScalarType st, at::IntArrayRef sizes, at::IntArrayRef strides) {
  return c10::str(name_of(st), " shape ", sizes, " strides ", strides);
}

// "" when tensor `t` has the dtype, shape and strides of tensor i of `layout`, else why not.
std::string mismatch(const at::Tensor& t, const Layout& layout, int64_t i) {
  if (t.scalar_type() == layout.dtype && t.sizes() == at::IntArrayRef(layout.sizes[i]) &&
      t.strides() == at::IntArrayRef(layout.strides[i]))
    return "";
  return c10::str("tensor ", i, " is ", describe(t.scalar_type(), t.sizes(), t.strides()),
                  "; expected ", describe(layout.dtype, layout.sizes[i], layout.strides[i]));
}

// Every tensor alone: CPU, supported, one dtype, dense and non-overlapping.
void check_tensors(const std::vector<at::Tensor>& ts) {
  for (size_t i = 0; i < ts.size(); ++i) {
    const at::Tensor& t = ts[i];
    if (!t.defined()) throw LayoutError(c10::str("tensor ", i, " is undefined (None)"));
    if (!t.device().is_cpu())
      throw LayoutError(c10::str("tensor ", i, " is on ", t.device(),
                                 "; the cpu backend steps CPU tensors"));
    if (!supported(t.scalar_type()))
      throw LayoutError(c10::str("tensor ", i, " is ", name_of(t.scalar_type()),
                                 "; the cpu backend steps float32, float64, bfloat16 and "
                                 "float16 tensors"));
    if (t.scalar_type() != ts[0].scalar_type())
      throw LayoutError(c10::str("tensor ", i, " is ", name_of(t.scalar_type()), ", tensor 0 ",
                                 name_of(ts[0].scalar_type()), ": a list has one dtype"));
    if (!t.is_non_overlapping_and_dense())
      throw LayoutError(c10::str("tensor ", i, " (shape ", t.sizes(), ", strides ", t.strides(),
                                 ") is not dense and non-overlapping"));
  }
}

std::shared_ptr<const Layout> make_layout(const std::vector<at::Tensor>& ts) {
  auto layout = std::make_shared<Layout>();
  if (!ts.empty()) layout->dtype = ts[0].scalar_type();
  int64_t room = kItem;
  for (int64_t i = 0; i < static_cast<int64_t>(ts.size()); ++i) {
    layout->sizes.emplace_back(ts[i].sizes());
    layout->strides.emplace_back(ts[i].strides());
    const int64_t n = ts[i].numel();
    for (int64_t start = 0; start < n;) {
      const int64_t len = std::min(room, n - start);
      layout->segments.push_back({i, start, len});
      start += len;
      room -= len;
      if (room == 0) {
        layout->first.push_back(static_cast<int64_t>(layout->segments.size()));
        room = kItem;
      }
    }
  }
  if (room != kItem) layout->first.push_back(static_cast<int64_t>(layout->segments.size()));
  return layout;
}

}  // namespace

PackedList::PackedList(std::vector<at::Tensor> tensors, const PackedList* like)
    : tensors_(std::move(tensors)) {
  check_tensors(tensors_);
  if (like != nullptr) {
    const Layout& ref = like->layout();
    if (size() != ref.tensors())
      throw LayoutError(c10::str(size(), " tensors, ", ref.tensors(), " expected"));
    for (int64_t i = 0; i < size(); ++i) {
      const std::string why = mismatch(tensors_[i], ref, i);
      if (!why.empty()) throw LayoutError(why + " (the list it is packed like)");
    }
    layout_ = like->layout_;
  } else {
    layout_ = make_layout(tensors_);
  }
  data_.reserve(tensors_.size());
  for (at::Tensor& t : tensors_) data_.push_back(static_cast<char*>(t.data_ptr()));
}

void PackedList::check_matches(const PackedList& first, const char* op, const char* name) const {
  if (layout_ == first.layout_) return;
  const Layout& ref = first.layout();
  if (size() != ref.tensors())
    throw LayoutError(c10::str(op, ": ", name, " has ", size(), " tensors, the first list ",
                               ref.tensors()));
  for (int64_t i = 0; i < size(); ++i) {
    const std::string why = mismatch(tensors_[i], ref, i);
    if (!why.empty())
      throw LayoutError(c10::str(op, ": ", name, ": ", why, " (as the first list)"));
  }
}

char* const* PackedList::data() {
  for (int64_t i = 0; i < size(); ++i) {
    char* now = static_cast<char*>(tensors_[i].data_ptr());
    if (now != data_[i]) repoint(i, now);
  }
  return data_.data();
}

void PackedList::repoint(int64_t i, char* now) {
  const at::Tensor& t = tensors_[i];
  std::string why = mismatch(t, *layout_, i);
  if (why.empty() && !t.device().is_cpu()) why = c10::str("tensor ", i, " is on ", t.device());
  if (why.empty() && !t.is_non_overlapping_and_dense())
    why = c10::str("tensor ", i, " is not dense and non-overlapping");
  if (!why.empty())
    throw LayoutError("a tensor of a packed list changed since it was packed: " + why +
                      "; pack the list again");
  data_[i] = now;
}

}  // namespace xsam_cpu
