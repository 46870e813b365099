// Multi-tensor apply: one kernel launch for a whole list of tensors.
//
// The addresses and sizes of up to kMaxTensors tensors travel in the kernel's
// argument struct (kept under the classic 4 KB parameter limit, so it works on
// every CUDA version and architecture). The grid has one block per
// (tensor, chunk of kChunk elements); when the table of tensors or blocks fills
// up, the launch goes out and the table starts again (a tensor cut in the middle
// continues in the next launch). Chunks never straddle launches.
//
// A functor (one per phase, see xsam_kernels.cu) says which of the DEPTH lists
// it reads and writes and transforms one element at a time, in the accumulation
// type. The kernel does the memory traffic: 16-byte vector loads and stores when
// every pointer of the (tensor, chunk) is 16-byte aligned, a scalar loop for the
// remainder and for unaligned tensors. Reductions (kSums > 0) leave one partial
// per block in a fixed slot; sum_partials_kernel adds them up in a fixed order,
// so sums are bit-identical from run to run (no floating-point atomics).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace xsam_cuda {

constexpr int kChunk = 65536;   // elements per block (a multiple of every vector width)
constexpr int kThreads = 512;   // threads per block
constexpr int kWarp = 32;
constexpr int kMaxBlocks = 320; // blocks per launch
constexpr int kParamLimit = 4096;

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// The argument struct. DEPTH lists (params, grads, ...) line up tensor by tensor.
template <int DEPTH>
struct TensorListMeta {
  // as many tensors as fit next to kMaxBlocks block entries in ~4 KB
  static constexpr int kMaxTensors = 280 / (DEPTH + 1) < 110 ? 280 / (DEPTH + 1) : 110;
  void* addr[DEPTH][kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t block_chunk[kMaxBlocks];  // chunk index inside its tensor
  uint8_t block_tensor[kMaxBlocks]; // slot in addr/numel
};

// Element <-> accumulation type, bit-exact and without type punning through
// pointers (c10's own conversions read the bits through a reinterpret_cast,
// which strict aliasing lets a host compiler break). Narrowing rounds to
// nearest even, as torch does.
template <typename T>
__host__ __device__ __forceinline__ acc_t<T> widen(T x) {
  return x;
}
template <>
__host__ __device__ __forceinline__ float widen(c10::BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}
template <>
__host__ __device__ __forceinline__ float widen(c10::Half x) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(x.x));
#else
  return c10::detail::fp16_ieee_to_fp32_value(x.x);
#endif
}

template <typename T>
__host__ __device__ __forceinline__ T narrow(acc_t<T> v) {
  return v;
}
template <>
__host__ __device__ __forceinline__ c10::BFloat16 narrow(float v) {
#if defined(__CUDA_ARCH__)
  return c10::BFloat16(__bfloat16_as_ushort(__float2bfloat16_rn(v)), c10::BFloat16::from_bits());
#else
  return c10::BFloat16(c10::detail::round_to_nearest_even(v), c10::BFloat16::from_bits());
#endif
}
template <>
__host__ __device__ __forceinline__ c10::Half narrow(float v) {
#if defined(__CUDA_ARCH__)
  return c10::Half(__half_as_ushort(__float2half_rn(v)), c10::Half::from_bits());
#else
  return c10::Half(c10::detail::fp16_ieee_from_fp32_value(v), c10::Half::from_bits());
#endif
}

template <typename T>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / sizeof(T);
  T x[kWidth];
};

template <int DEPTH>
__host__ __device__ __forceinline__ bool all_aligned(void* const (&ptr)[DEPTH], unsigned used) {
  uintptr_t bits = 0;
#pragma unroll
  for (int d = 0; d < DEPTH; ++d)
    if (used & (1u << d)) bits |= reinterpret_cast<uintptr_t>(ptr[d]);
  return (bits & 15u) == 0;
}

// Fixed-order block reduction of N values per thread; the result is valid in
// thread 0. Same inputs and block size -> same bits.
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
}

// Where block `block` of a launch works: its DEPTH pointers and its length.
template <typename T, int DEPTH>
__host__ __device__ __forceinline__ int chunk_of(const TensorListMeta<DEPTH>& meta, int block,
                                                 void* (&ptr)[DEPTH]) {
  const int slot = meta.block_tensor[block];
  const int64_t start = static_cast<int64_t>(meta.block_chunk[block]) * kChunk;
  const int64_t remaining = meta.numel[slot] - start;
#pragma unroll
  for (int d = 0; d < DEPTH; ++d) ptr[d] = static_cast<T*>(meta.addr[d][slot]) + start;
  return remaining < kChunk ? static_cast<int>(remaining) : kChunk;
}

// The share of thread `tid` (of `nthreads`) in one chunk of `len` elements:
// 16-byte packs if every used pointer is aligned, then single elements.
// Host-callable so that the chunker can be exercised without a GPU.
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

// The kernel of every phase. `partials` (reductions only) points at this
// launch's first slot; component k of block b goes to partials[k * stride + b].
template <typename T, int DEPTH, typename Op>
__global__ void __launch_bounds__(kThreads)
    multi_tensor_kernel(TensorListMeta<DEPTH> meta, Op op, acc_t<T>* partials, int64_t stride) {
  using A = acc_t<T>;
  constexpr int kSumSlots = Op::kSums > 0 ? Op::kSums : 1;
  op.load_scalars();  // device-resident scalars, read once per thread
  void* ptr[DEPTH];
  const int len = chunk_of<T, DEPTH>(meta, blockIdx.x, ptr);
  A sums[kSumSlots];
#pragma unroll
  for (int k = 0; k < kSumSlots; ++k) sums[k] = A(0);
  process_chunk<T, DEPTH>(ptr, len, op, threadIdx.x, blockDim.x, sums);
  if constexpr (Op::kSums > 0) {
    block_reduce<A, kSumSlots>(sums);
    if (threadIdx.x == 0)
#pragma unroll
      for (int k = 0; k < kSumSlots; ++k) partials[k * stride + blockIdx.x] = sums[k];
  }
}

// out[k] = sum_b partials[k * n + b], in a fixed order, one block.
template <typename A, int N>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const A* partials, int64_t n, A* out) {
  A v[N];
#pragma unroll
  for (int k = 0; k < N; ++k) {
    v[k] = A(0);
    for (int64_t b = threadIdx.x; b < n; b += blockDim.x) v[k] += partials[k * n + b];
  }
  block_reduce<A, N>(v);
  if (threadIdx.x == 0)
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = v[k];
}

// Host side: walk the tensors, fill the table, and hand it to
// `launch(meta, blocks, block_offset)` whenever it is full (and once at the end).
// `addr(d, t)` and `numel(t)` describe tensor t of list d (t < ntensors);
// zero-size tensors are skipped. block_offset counts the blocks of earlier
// launches: the slot of a block's partial sums. Returns the number of launches.
template <int DEPTH, typename AddrFn, typename NumelFn, typename LaunchFn>
int64_t plan_launches(int64_t ntensors, AddrFn addr, NumelFn numel, LaunchFn launch) {
  using Meta = TensorListMeta<DEPTH>;
  static_assert(Meta::kMaxTensors <= 256, "block_tensor is a uint8_t");
  Meta meta;
  int tensors = 0, blocks = 0;
  int64_t launches = 0, block_offset = 0;
  auto flush = [&]() {
    launch(static_cast<const Meta&>(meta), blocks, block_offset);
    block_offset += blocks;
    ++launches;
    blocks = 0;
  };
  for (int64_t t = 0; t < ntensors; ++t) {
    const int64_t n = numel(t);
    if (n == 0) continue;
    for (int d = 0; d < DEPTH; ++d) meta.addr[d][tensors] = addr(d, t);
    meta.numel[tensors] = n;
    int slot = tensors++;
    const int64_t nchunks = (n + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < nchunks; ++c) {
      meta.block_tensor[blocks] = static_cast<uint8_t>(slot);
      meta.block_chunk[blocks] = static_cast<int32_t>(c);
      ++blocks;
      const bool last_chunk = c == nchunks - 1;
      if (blocks == kMaxBlocks || (tensors == Meta::kMaxTensors && last_chunk)) {
        flush();
        if (last_chunk) {
          tensors = 0;
        } else {  // this tensor continues in the next launch, from slot 0
          for (int d = 0; d < DEPTH; ++d) meta.addr[d][0] = meta.addr[d][slot];
          meta.numel[0] = n;
          slot = 0;
          tensors = 1;
        }
      }
    }
  }
  if (blocks > 0) flush();
  return launches;
}

// plan_launches + multi_tensor_kernel on `stream`.
template <typename T, int DEPTH, typename Op, typename AddrFn, typename NumelFn>
int64_t multi_tensor_apply(int64_t ntensors, AddrFn addr, NumelFn numel, const Op& op,
                           acc_t<T>* partials, int64_t stride, cudaStream_t stream) {
  static_assert(sizeof(TensorListMeta<DEPTH>) + sizeof(Op) + sizeof(void*) + sizeof(int64_t) <=
                    kParamLimit,
                "kernel arguments exceed 4 KB");
  return plan_launches<DEPTH>(
      ntensors, addr, numel,
      [&](const TensorListMeta<DEPTH>& meta, int blocks, int64_t block_offset) {
        acc_t<T>* part = partials != nullptr ? partials + block_offset : nullptr;
        multi_tensor_kernel<T, DEPTH, Op><<<blocks, kThreads, 0, stream>>>(meta, op, part, stride);
      });
}

}  // namespace xsam_cuda
