// The work of one phase: a table of (tensor, chunk) items built once per list layout, and
// the walk of a persistent grid over it.
//
// Every tensor of a list is cut into chunks of kChunk elements in memory order (a chunk
// start is a multiple of kChunk, so of 16 bytes for every element type: a chunk is
// 16-byte aligned iff its tensor is). The items of all tensors form one table in device
// memory, next to one int64 pointer table per list; a launch passes only their addresses,
// so one launch covers any number of tensors and chunks. The grid holds
// min(items, blocks per SM * SMs) blocks; block b takes items b, b + grid, b + 2 grid, ...
// Host and device code: the host emulation runs the same planner and walk.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "../common/step_scalars.h"  // XSAM_HD

namespace xsam_cuda {

constexpr int kChunk = 16384;  // elements per work item (a multiple of every vector width)
constexpr int kThreads = 512;  // threads per block
constexpr int kWarp = 32;

// One chunk of one tensor: elements [start, start + len) of tensor `tensor`.
struct WorkItem {
  int64_t start;
  int32_t tensor;
  int32_t len;
};
static_assert(sizeof(WorkItem) == 16, "a work item is two int64 words in the device table");

// The items of tensors of `numels` elements, tensor by tensor, chunk by chunk (empty
// tensors have none).
inline std::vector<WorkItem> plan_work(const std::vector<int64_t>& numels) {
  if (numels.size() > static_cast<size_t>(INT32_MAX))
    throw std::invalid_argument("xsam_fast cuda backend: more than 2^31 - 1 tensors in a list");
  std::vector<WorkItem> items;
  for (size_t t = 0; t < numels.size(); ++t)
    for (int64_t start = 0; start < numels[t]; start += kChunk) {
      const int64_t len = numels[t] - start < kChunk ? numels[t] - start : kChunk;
      items.push_back(WorkItem{start, static_cast<int32_t>(t), static_cast<int32_t>(len)});
    }
  return items;
}

// Blocks of a persistent launch over `nitems` items: enough to fill the GPU, never more
// than there are items; 0 means no launch.
inline int64_t grid_size(int64_t nitems, int blocks_per_sm, int sm_count) {
  const int64_t full = static_cast<int64_t>(blocks_per_sm > 0 ? blocks_per_sm : 1) *
                       (sm_count > 0 ? sm_count : 1);
  return nitems < full ? nitems : full;
}

// What a launch reads: one pointer table per list (DEPTH lists lining up tensor by
// tensor) and the work items, all in the memory the kernel runs on.
template <int DEPTH>
struct Tables {
  const int64_t* ptrs[DEPTH];
  const WorkItem* items;
  int64_t nitems;
};

// The item indices of block `block` in a grid of `grid` blocks, in order.
template <typename F>
XSAM_HD void for_each_item(int64_t block, int64_t grid, int64_t nitems, F&& f) {
  for (int64_t i = block; i < nitems; i += grid) f(i);
}

// The DEPTH element pointers of work item `w` (element type T).
template <typename T, int DEPTH>
XSAM_HD void item_pointers(const Tables<DEPTH>& tables, const WorkItem& w, void* (&ptr)[DEPTH]) {
#pragma unroll
  for (int d = 0; d < DEPTH; ++d)
    ptr[d] = reinterpret_cast<T*>(static_cast<uintptr_t>(tables.ptrs[d][w.tensor])) + w.start;
}

}  // namespace xsam_cuda
