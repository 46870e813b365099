// One thread's share of one work item: the memory traffic around a phase functor.
//
// A functor (xsam_functors.cuh) says which of its DEPTH lists it reads and writes (bit
// masks kReads, kWrites) and how many sums it accumulates (kSums), and transforms the
// values of one element in place, in the accumulation type. This loop loads and stores:
// 16-byte vectors when every used pointer of the item is 16-byte aligned, then single
// elements for the tail (and for the whole item when a pointer is not aligned).
// Host and device code.
#pragma once

#include <cstdint>

#include "element_types.cuh"
#include "work_table.h"

namespace xsam_cuda {

template <int DEPTH>
__host__ __device__ __forceinline__ bool all_aligned(void* const (&ptr)[DEPTH], unsigned used) {
  uintptr_t bits = 0;
#pragma unroll
  for (int d = 0; d < DEPTH; ++d)
    if (used & (1u << d)) bits |= reinterpret_cast<uintptr_t>(ptr[d]);
  return (bits & 15u) == 0;
}

// Thread `tid` of `nthreads` on the `len` elements at `ptr`: elements (or vectors)
// tid, tid + nthreads, ...; sums accumulate into `sums` in that order.
template <typename T, int DEPTH, typename Op, int S>
__host__ __device__ __forceinline__ void process_chunk(void* const (&ptr)[DEPTH], int len,
                                                       const Op& op, int tid, int nthreads,
                                                       acc_t<T> (&sums)[S]) {
  using A = acc_t<T>;
  constexpr int kWidth = Pack<T>::kWidth;
  static_assert(kChunk % kWidth == 0, "a chunk must hold whole vectors");
  int scalar_from = 0;
  if (all_aligned<DEPTH>(ptr, Op::kReads | Op::kWrites)) {
    const int nvec = len / kWidth;
    for (int i = tid; i < nvec; i += nthreads) {
      Pack<T> pack[DEPTH];
#pragma unroll
      for (int d = 0; d < DEPTH; ++d)
        if (Op::kReads & (1u << d)) pack[d] = static_cast<const Pack<T>*>(ptr[d])[i];
#pragma unroll
      for (int j = 0; j < kWidth; ++j) {
        A v[DEPTH];
#pragma unroll
        for (int d = 0; d < DEPTH; ++d)
          v[d] = (Op::kReads & (1u << d)) ? widen(pack[d].x[j]) : A(0);
        op(v, sums);
#pragma unroll
        for (int d = 0; d < DEPTH; ++d)
          if (Op::kWrites & (1u << d)) pack[d].x[j] = narrow<T>(v[d]);
      }
#pragma unroll
      for (int d = 0; d < DEPTH; ++d)
        if (Op::kWrites & (1u << d)) static_cast<Pack<T>*>(ptr[d])[i] = pack[d];
    }
    scalar_from = nvec * kWidth;
  }
  for (int i = scalar_from + tid; i < len; i += nthreads) {
    A v[DEPTH];
#pragma unroll
    for (int d = 0; d < DEPTH; ++d)
      v[d] = (Op::kReads & (1u << d)) ? widen(static_cast<const T*>(ptr[d])[i]) : A(0);
    op(v, sums);
#pragma unroll
    for (int d = 0; d < DEPTH; ++d)
      if (Op::kWrites & (1u << d)) static_cast<T*>(ptr[d])[i] = narrow<T>(v[d]);
  }
}

// Thread `tid`'s share of the cleanup of a reduction: partials tid, tid + nthreads, ...
// of `n` per-item partials, added in that order.
template <typename A>
__host__ __device__ __forceinline__ A partial_share(const A* partials, int64_t n, int tid,
                                                    int nthreads) {
  A v = A(0);
  for (int64_t b = tid; b < n; b += nthreads) v += partials[b];
  return v;
}

// The end of a reduction: the accumulation-type total converted to float64 once, then
// written to (or added to) its slot of `out` (base.py: sumsq, final_sums).
template <typename A>
__host__ __device__ __forceinline__ void store_total(double* out, A total, bool accumulate) {
  const double t = static_cast<double>(total);
  *out = accumulate ? *out + t : t;
}

}  // namespace xsam_cuda
