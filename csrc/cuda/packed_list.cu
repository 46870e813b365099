// Packing tensor lists for the CUDA kernels (xsam_cuda.h, PackedList): the layout check,
// the device pointer table of a list and the device work table of a layout, copied from
// pinned host memory without synchronising, and the device-side wait of a phase that runs
// on another stream than the copies.
#include <cstring>
#include <utility>

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "xsam_cuda.h"

namespace xsam_cuda {

struct CopyFence {
  explicit CopyFence(const c10::cuda::CUDAStream& s) : stream(s) {
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    C10_CUDA_CHECK(cudaEventRecord(done, stream.stream()));
  }
  ~CopyFence() { C10_CUDA_CHECK_WARN(cudaEventDestroy(done)); }
  CopyFence(const CopyFence&) = delete;
  CopyFence& operator=(const CopyFence&) = delete;

  c10::cuda::CUDAStream stream;  // where the copy went
  cudaEvent_t done;              // recorded after it
};

namespace {

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return static_cast<int>(Dtype::kFloat32);
    case at::kDouble: return static_cast<int>(Dtype::kFloat64);
    case at::kHalf: return static_cast<int>(Dtype::kFloat16);
    case at::kBFloat16: return static_cast<int>(Dtype::kBFloat16);
    default: return -1;
  }
}

// `n` int64 words to `device`: through a pinned buffer, on the device's current stream,
// without synchronising (torch keeps the pinned buffer until the copy has run).
std::pair<at::Tensor, std::shared_ptr<CopyFence>> copy_to_device(const void* words, int64_t n,
                                                                 int64_t device) {
  at::Tensor host = at::empty({n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(host.data_ptr<int64_t>(), words, static_cast<size_t>(n) * sizeof(int64_t));
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device));
  at::Tensor on_device =
      host.to(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device)), at::kLong,
              /*non_blocking=*/true);
  return {on_device, std::make_shared<CopyFence>(stream)};
}

// Orders `stream` after the copy into `table` (a device-side wait, no host sync) and tells
// the allocator that `stream` uses it.
void wait_for(const std::shared_ptr<CopyFence>& fence, const at::Tensor& table,
              const c10::cuda::CUDAStream& stream) {
  if (!fence || fence->stream == stream) return;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream.stream(), &capturing));
  // A capture starts after a device synchronisation (torch.cuda.graph), so the copy is
  // done; an event recorded outside the capture cannot be waited on inside it.
  if (capturing == cudaStreamCaptureStatusNone)
    C10_CUDA_CHECK(cudaStreamWaitEvent(stream.stream(), fence->done, 0));
  table.record_stream(stream.unwrap());
}

}  // namespace

std::shared_ptr<PackedList> PackedList::make(std::vector<at::Tensor> tensors,
                                             const std::shared_ptr<PackedList>& like) {
  const auto n = static_cast<int64_t>(tensors.size());
  std::vector<TensorDesc> descs(tensors.size());
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined()) layout_fail("tensor ", i, " is undefined");
    if (!t.is_cuda())
      layout_fail("tensor ", i, " is on ", t.device(), "; the cuda backend steps CUDA tensors");
    descs[i] = TensorDesc{t.get_device(), dtype_code(t.scalar_type()),
                          c10::toString(t.scalar_type()), t.dim(), t.sizes().data(),
                          t.strides().data()};
  }
  auto list = std::shared_ptr<PackedList>(new PackedList());
  list->layout_ = Layout::of(descs.data(), n, like ? like->layout_ : nullptr);
  list->tensors_ = std::move(tensors);
  if (n == 0) return list;

  const int64_t device = list->layout_->device();
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  std::vector<int64_t> ptrs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    ptrs[i] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(list->tensors_[i].data_ptr()));
  std::tie(list->ptrs_, list->ptrs_fence_) = copy_to_device(ptrs.data(), n, device);

  if (like) {  // the same layout: share its work table
    list->items_ = like->items_;
    list->items_fence_ = like->items_fence_;
  } else if (!list->layout_->items().empty()) {
    const auto& items = list->layout_->items();
    std::tie(list->items_, list->items_fence_) = copy_to_device(
        items.data(), static_cast<int64_t>(items.size() * sizeof(WorkItem) / sizeof(int64_t)),
        device);
  }
  return list;
}

ListView PackedList::view() const {
  if (size() == 0) return ListView{layout_.get(), nullptr, nullptr};
  const auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device()));
  wait_for(ptrs_fence_, ptrs_, stream);
  if (items_.defined()) wait_for(items_fence_, items_, stream);
  return ListView{layout_.get(), ptrs_.data_ptr<int64_t>(),
                  items_.defined() ? reinterpret_cast<const WorkItem*>(items_.data_ptr<int64_t>())
                                   : nullptr};
}

}  // namespace xsam_cuda
