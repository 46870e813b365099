// The device kernels of the CUDA backend: the persistent multi-tensor kernel of every
// elementwise and reduction phase, the cleanup of a reduction, and the single-thread
// kernels of the device scalars. Device code only (the host emulation mirrors
// block_reduce and walks the same items with the same chunk loop and functors).
#pragma once

#include <cstdint>

#include "../common/step_scalars.h"
#include "chunk_loop.cuh"
#include "element_types.cuh"
#include "work_table.h"

namespace xsam_cuda {

// Fixed-order block reduction of N values per thread: a shuffle tree in each warp, then
// the warps' results by the same tree in warp 0. The result is valid in thread 0; same
// inputs and block size give the same bits. Ends with a barrier, so the block may reduce
// again right away.
template <typename A, int N>
__device__ __forceinline__ void block_reduce(A (&v)[N]) {
  __shared__ A shared[N][kThreads / kWarp];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
#pragma unroll
  for (int k = 0; k < N; ++k)
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2)
      v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < N; ++k) shared[k][warp] = v[k];
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x / kWarp;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      v[k] = lane < nwarps ? shared[k][lane] : A(0);
#pragma unroll
      for (int offset = kWarp / 2; offset > 0; offset /= 2)
        v[k] += __shfl_down_sync(0xffffffffu, v[k], offset);
    }
  }
  __syncthreads();
}

// Every phase: each block walks its work items (for_each_item); each thread runs the
// functor over its share of an item (process_chunk). Reductions (Op::kSums > 0) leave one
// partial per item and component, partials[k * nitems + item]: the sums do not depend on
// the grid.
template <typename T, int DEPTH, typename Op>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(Tables<DEPTH> tables, Op op, acc_t<T>* partials) {
  using A = acc_t<T>;
  constexpr int S = Op::kSums > 0 ? Op::kSums : 1;
  op.load();  // the device scalars, once per thread
  for_each_item(blockIdx.x, gridDim.x, tables.nitems, [&](int64_t item) {
    const WorkItem w = tables.items[item];
    void* ptr[DEPTH];
    item_pointers<T, DEPTH>(tables, w, ptr);
    op.begin_item(w.tensor);
    A sums[S];
#pragma unroll
    for (int k = 0; k < S; ++k) sums[k] = A(0);
    process_chunk<T, DEPTH>(ptr, w.len, op, threadIdx.x, blockDim.x, sums);
    if constexpr (Op::kSums > 0) {
      block_reduce<A, S>(sums);
      if (threadIdx.x == 0)
#pragma unroll
        for (int k = 0; k < S; ++k) partials[k * tables.nitems + item] = sums[k];
    }
  });
}

// out[k] (=, or += if accumulate) the sum of partials[k * n .. k * n + n) in a fixed order,
// converted to float64 once; one block.
template <typename A, int N>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const A* partials, int64_t n, double* out, bool accumulate) {
  A v[N];
#pragma unroll
  for (int k = 0; k < N; ++k) v[k] = partial_share(partials + k * n, n, threadIdx.x, blockDim.x);
  block_reduce<A, N>(v);
  if (threadIdx.x == 0)
#pragma unroll
    for (int k = 0; k < N; ++k) store_total(out + k, v[k], accumulate);
}

// The device scalars (csrc/common/step_scalars.h), one thread each.
__global__ void ascent_scalars_kernel(double* sc, bool first, bool check) {
  xsam_scalars::ascent_scalars(sc, first, check);
}
__global__ void update_scalars_kernel(double* sc, bool check) {
  xsam_scalars::update_scalars(sc, check);
}
__global__ void plain_scalars_kernel(double* sc, bool check) {
  xsam_scalars::plain_scalars(sc, check);
}

}  // namespace xsam_cuda
