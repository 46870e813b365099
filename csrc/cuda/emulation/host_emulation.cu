// Host emulation of the CUDA backend, for tests on machines without a GPU.
//
// Compiled by nvcc as host code only (no kernel is instantiated) into a shared
// library that tests/test_cuda_backend.py loads with ctypes. It runs the real
// launch planner (plan_launches), the real per-chunk loop (process_chunk: vector
// packs when aligned, scalar tail) and the real functors of every phase on CPU
// memory, one emulated block after another and, inside a block, one emulated
// thread after another. What it cannot show: device code generation, the warp
// and block reductions, the cleanup kernel, streams; those run only on a GPU
// (the same tests against the real extension).
#include <cstdint>

#include "../xsam_functors.cuh"

namespace {
using namespace xsam_cuda;

// Runs one phase over `ntensors` tensors; ptrs[d * ntensors + t] is tensor t of
// list d. Block b of the whole phase leaves its sums in partials[k * stride + b]
// (acc_t<T>), when the functor reduces. Returns the number of launches.
template <typename T, int DEPTH, typename Op>
int64_t emulate(int64_t ntensors, void* const* ptrs, const int64_t* numels, Op op,
                void* partials, int64_t stride) {
  using A = acc_t<T>;
  constexpr int S = Op::kSums > 0 ? Op::kSums : 1;
  static_assert(Op::kDepth == DEPTH, "functor and lists disagree on depth");
  op.load_scalars();
  auto addr = [&](int d, int64_t t) { return ptrs[d * ntensors + t]; };
  auto numel = [&](int64_t t) { return numels[t]; };
  return plan_launches<DEPTH>(
      ntensors, addr, numel,
      [&](const TensorListMeta<DEPTH>& meta, int blocks, int64_t block_offset) {
        for (int b = 0; b < blocks; ++b) {
          void* ptr[DEPTH];
          const int len = chunk_of<T, DEPTH>(meta, b, ptr);
          A total[S] = {};
          for (int tid = 0; tid < kThreads; ++tid) {
            A sums[S] = {};
            process_chunk<T, DEPTH>(ptr, len, op, tid, kThreads, sums);
            for (int k = 0; k < S; ++k) total[k] += sums[k];
          }
          if (Op::kSums > 0)
            for (int k = 0; k < S; ++k)
              static_cast<A*>(partials)[k * stride + block_offset + b] = total[k];
        }
      });
}

enum Phase {
  kSumSq = 0,
  kAscent = 1,
  kBackupAscent = 2,
  kFinalSums = 3,
  kWritePoint = 4,
  kWriteGradRestore = 5,
  kSgdPlain = 6,
  kSgdInit = 7,
  kSgdMomentum = 8,
  kAdam = 9,
};

// AD: the ASAM geometry (the functors' ADAPTIVE variants, T = |theta_0| + eta).
// kSumSq then takes (tensors, weights) and kAscent (params, grads, backups).
template <typename T, bool AD>
int64_t run_phase(int phase, int64_t n, void* const* p, const int64_t* numel, const void* scalars,
                  const double* h, void* partials, int64_t stride, double eta_) {
  using A = acc_t<T>;
  const A* s = static_cast<const A*>(scalars);
  const A eta = static_cast<A>(eta_);
  switch (phase) {
    case kSumSq: {
      SumSqOp<T, AD> op{};
      op.eta = eta;
      return emulate<T, AD ? 2 : 1>(n, p, numel, op, partials, stride);
    }
    case kAscent: {
      AscentOp<T, false, AD> op{};
      op.scale_ptr = s;
      op.eta = eta;
      return emulate<T, AD ? 3 : 2>(n, p, numel, op, nullptr, 0);
    }
    case kBackupAscent: {
      AscentOp<T, true, AD> op{};
      op.scale_ptr = s;
      op.eta = eta;
      return emulate<T, 3>(n, p, numel, op, nullptr, 0);
    }
    case kFinalSums: {
      FinalSumsOp<T, AD> op{};
      op.eta = eta;
      return emulate<T, 3>(n, p, numel, op, partials, stride);
    }
    case kWritePoint: {
      WritePointOp<T, AD> op{};
      op.c.ptr = s;
      op.c.eta = eta;
      return emulate<T, 4>(n, p, numel, op, nullptr, 0);
    }
    case kWriteGradRestore: {
      WriteGradRestoreOp<T, AD> op{};
      op.c.ptr = s;
      op.c.eta = eta;
      return emulate<T, 4>(n, p, numel, op, nullptr, 0);
    }
    case kSgdPlain:
      return emulate<T, 4>(n, p, numel,
                           SgdOp<T, false, false, AD>::make(s, h[0], h[1], h[2], h[3], h[4] != 0,
                                                            h[5] != 0, eta_),
                           nullptr, 0);
    case kSgdInit:
      return emulate<T, 5>(n, p, numel,
                           SgdOp<T, true, true, AD>::make(s, h[0], h[1], h[2], h[3], h[4] != 0,
                                                          h[5] != 0, eta_),
                           nullptr, 0);
    case kSgdMomentum:
      return emulate<T, 5>(n, p, numel,
                           SgdOp<T, true, false, AD>::make(s, h[0], h[1], h[2], h[3], h[4] != 0,
                                                           h[5] != 0, eta_),
                           nullptr, 0);
    case kAdam:
      return emulate<T, 6>(n, p, numel,
                           AdamOp<T, AD>::make(s, h[0], h[1], h[2], h[3], h[4], h[5] != 0,
                                               h[6] != 0, h[7], h[8], eta_),
                           nullptr, 0);
    default:
      return -1;
  }
}

template <typename T>
int64_t run_phase(int phase, int64_t n, void* const* p, const int64_t* numel, const void* scalars,
                  const double* h, void* partials, int64_t stride, double eta) {
  if (eta >= 0)
    return run_phase<T, true>(phase, n, p, numel, scalars, h, partials, stride, eta);
  return run_phase<T, false>(phase, n, p, numel, scalars, h, partials, stride, eta);
}

}  // namespace

// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; eta < 0: plain XSAM, else
// ASAM's offset. Returns the number of launches the GPU would make, or -1 for an
// unknown phase or dtype.
extern "C" int64_t xsam_emu_run(int phase, int dtype, int64_t ntensors, void* const* ptrs,
                                const int64_t* numels, const void* scalars, const double* hyper,
                                void* partials, int64_t stride, double eta) {
  switch (dtype) {
    case 0:
      return run_phase<float>(phase, ntensors, ptrs, numels, scalars, hyper, partials, stride,
                              eta);
    case 1:
      return run_phase<double>(phase, ntensors, ptrs, numels, scalars, hyper, partials, stride,
                               eta);
    case 2:
      return run_phase<c10::Half>(phase, ntensors, ptrs, numels, scalars, hyper, partials,
                                  stride, eta);
    case 3:
      return run_phase<c10::BFloat16>(phase, ntensors, ptrs, numels, scalars, hyper, partials,
                                      stride, eta);
    default:
      return -1;
  }
}

// Constants of the chunker, for the tests.
extern "C" int64_t xsam_emu_chunk() { return kChunk; }
extern "C" int64_t xsam_emu_max_tensors(int depth) {
  switch (depth) {
    case 1: return TensorListMeta<1>::kMaxTensors;
    case 2: return TensorListMeta<2>::kMaxTensors;
    case 3: return TensorListMeta<3>::kMaxTensors;
    case 4: return TensorListMeta<4>::kMaxTensors;
    case 5: return TensorListMeta<5>::kMaxTensors;
    case 6: return TensorListMeta<6>::kMaxTensors;
    default: return -1;
  }
}
extern "C" int64_t xsam_emu_max_blocks() { return kMaxBlocks; }
