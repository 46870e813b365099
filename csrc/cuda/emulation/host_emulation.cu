// Host emulation of the CUDA backend, for tests on machines without a GPU.
//
// Compiled by nvcc as host code (no kernel is instantiated) into a shared library that
// tests/cuda_emulation.py loads with ctypes. It runs, on CPU memory, the extension's own
// layout check and work planner (list_layout.h, work_table.h), the phase dispatch
// (phases.cuh), and per launch the same grid (grid_size) walking the same items
// (for_each_item, item_pointers) with the same per-thread chunk loop (process_chunk),
// functors and device-scalar functions (step_scalars.h): blocks one after another, and
// inside a block its kThreads threads one after another. The block reduction is mirrored
// (block_reduce_like_gpu: the warp shuffle tree, then the tree over the warps' results),
// so sums come out in the GPU's order of additions. What it cannot show: device code
// generation, real concurrency (races, barriers), streams, the pinned-memory copies and
// the PyTorch bindings; only a GPU run of the same tests does.
#include <array>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../chunk_loop.cuh"
#include "../dtype_dispatch.h"
#include "../list_layout.h"
#include "../phases.cuh"
#include "../work_table.h"
#include "../xsam_functors.cuh"

namespace {
using namespace xsam_cuda;

// The emulated GPU: multiprocessors and resident blocks per multiprocessor (tests vary them).
int g_sm_count = 3;
int g_blocks_per_sm = 2;
int64_t g_launches = 0;
int64_t g_last_grid = 0;

// `block_reduce` of kernels.cuh on the values of a block's threads (v[tid][k]): in each
// warp, lane l adds lane l + offset (its own value past the warp's end) for offsets 16, 8,
// 4, 2, 1, all lanes at once; then warp 0 does the same over the warps' lane-0 results
// (0 past the number of warps). Returns thread 0's result.
template <typename A, int N>
std::array<A, N> block_reduce_like_gpu(std::vector<std::array<A, N>> v) {
  const int nthreads = static_cast<int>(v.size());
  auto warp_tree = [](std::array<A, N>* lanes) {
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      std::array<A, N> before[kWarp];
      for (int l = 0; l < kWarp; ++l) before[l] = lanes[l];
      for (int l = 0; l < kWarp; ++l)
        for (int k = 0; k < N; ++k)
          lanes[l][k] += l + offset < kWarp ? before[l + offset][k] : before[l][k];
    }
  };
  const int nwarps = nthreads / kWarp;
  std::vector<std::array<A, N>> firsts(kWarp);
  for (int w = 0; w < nwarps; ++w) {
    warp_tree(&v[w * kWarp]);
    firsts[w] = v[w * kWarp];
  }
  for (int l = nwarps; l < kWarp; ++l) firsts[l].fill(A(0));
  warp_tree(firsts.data());
  return firsts[0];
}

// Runs the kernels of phases.cuh on host memory, as the GPU would.
struct EmulatedRunner {
  template <typename T, int DEPTH, typename Op>
  void walk(const Tables<DEPTH>& t, Op op, acc_t<T>* partials) {
    using A = acc_t<T>;
    constexpr int S = Op::kSums > 0 ? Op::kSums : 1;
    const int64_t grid = grid_size(t.nitems, g_blocks_per_sm, g_sm_count);
    if (grid == 0) return;
    g_last_grid = grid;
    ++g_launches;
    op.load();  // what every thread does first (it reads the same device scalars)
    for (int64_t block = 0; block < grid; ++block) {
      for_each_item(block, grid, t.nitems, [&](int64_t item) {
        const WorkItem w = t.items[item];
        void* ptr[DEPTH];
        item_pointers<T, DEPTH>(t, w, ptr);
        op.begin_item(w.tensor);
        std::vector<std::array<A, S>> sums(kThreads);
        for (int tid = 0; tid < kThreads; ++tid) {
          A s[S] = {};
          process_chunk<T, DEPTH>(ptr, w.len, op, tid, kThreads, s);
          for (int k = 0; k < S; ++k) sums[tid][k] = s[k];
        }
        if constexpr (Op::kSums > 0) {
          const std::array<A, S> total = block_reduce_like_gpu<A, S>(std::move(sums));
          for (int k = 0; k < S; ++k) partials[k * t.nitems + item] = total[k];
        }
      });
    }
  }

  template <typename T, int DEPTH, typename Op>
  void elementwise(const Tables<DEPTH>& t, const Op& op) {
    static_assert(Op::kDepth == DEPTH && Op::kSums == 0, "functor and launch disagree");
    walk<T, DEPTH>(t, op, nullptr);
  }

  template <typename T, int DEPTH, typename Op>
  void reduce(const Tables<DEPTH>& t, const Op& op, double* out, bool accumulate) {
    static_assert(Op::kDepth == DEPTH && Op::kSums > 0, "functor and launch disagree");
    using A = acc_t<T>;
    constexpr int N = Op::kSums;
    std::vector<A> partials(static_cast<size_t>(N * (t.nitems > 0 ? t.nitems : 1)));
    walk<T, DEPTH>(t, op, partials.data());
    // sum_partials_kernel: one block
    std::vector<std::array<A, N>> shares(kThreads);
    for (int tid = 0; tid < kThreads; ++tid)
      for (int k = 0; k < N; ++k)
        shares[tid][k] = partial_share(partials.data() + k * t.nitems, t.nitems, tid, kThreads);
    const std::array<A, N> total = block_reduce_like_gpu<A, N>(std::move(shares));
    for (int k = 0; k < N; ++k) store_total(out + k, total[k], accumulate);
    ++g_launches;
  }
};

// A packed list: its layout and its pointer table (host memory).
struct EmulatedList {
  std::shared_ptr<const Layout> layout;
  std::vector<int64_t> ptrs;
  ListView view() const { return ListView{layout.get(), ptrs.data(), layout->items().data()}; }
};

const EmulatedList& list(const void* handle) { return *static_cast<const EmulatedList*>(handle); }

std::optional<double> eta_of(double eta) {
  return eta < 0 ? std::nullopt : std::optional<double>(eta);
}

// Runs `f`; 0 when it returns, else -1 (a value error) or -2 (a LayoutError) with the
// message in err[0..errlen).
template <typename F>
int guarded(char* err, int64_t errlen, F&& f) {
  auto message = [&](const char* what) {
    if (errlen > 0) {
      std::strncpy(err, what, static_cast<size_t>(errlen - 1));
      err[errlen - 1] = '\0';
    }
  };
  try {
    f();
    return 0;
  } catch (const LayoutError& e) {
    message(e.what());
    return -2;
  } catch (const std::exception& e) {
    message(e.what());
    return -1;
  }
}

}  // namespace

// ------------------------------------------------------------------ the ctypes interface
// Lists: xsam_emu_pack makes one (the extension's PackedList without the device copies)
// from per-tensor descriptors; xsam_emu_free releases it. Phases take list handles and
// host pointers to float64 sc / hyper / coeffs / out. eta < 0: plain XSAM. Every call
// returns 0, or -1 / -2 with a message (see guarded).
extern "C" {

int xsam_emu_pack(int64_t n, const int64_t* devices, const int* dtypes,
                  const char* const* dtype_names, const int64_t* ndims,
                  const int64_t* const* sizes, const int64_t* const* strides,
                  const int64_t* data_ptrs, const void* like, void** handle, char* err,
                  int64_t errlen) {
  return guarded(err, errlen, [&] {
    std::vector<TensorDesc> descs(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      descs[i] = TensorDesc{devices[i], dtypes[i], dtype_names[i], ndims[i], sizes[i],
                            strides[i]};
    auto packed = std::make_unique<EmulatedList>();
    packed->layout = Layout::of(descs.data(), n, like ? list(like).layout : nullptr);
    packed->ptrs.assign(data_ptrs, data_ptrs + n);
    *handle = packed.release();
  });
}

void xsam_emu_free(void* handle) { delete static_cast<EmulatedList*>(handle); }

int64_t xsam_emu_num_items(const void* handle) {
  return static_cast<int64_t>(list(handle).layout->items().size());
}

int xsam_emu_shares_layout(const void* a, const void* b) {
  return list(a).layout == list(b).layout;
}

// the items of a list: (start, tensor, len) triples into out[0 .. 3 * num_items)
void xsam_emu_items(const void* handle, int64_t* out) {
  for (const WorkItem& w : list(handle).layout->items()) {
    *out++ = w.start;
    *out++ = w.tensor;
    *out++ = w.len;
  }
}

int xsam_emu_sumsq(const void* grads, const void* weights, double* out, int accumulate,
                   double eta, char* err, int64_t errlen) {
  return guarded(err, errlen, [&] {
    EmulatedRunner run;
    const ListView g = list(grads).view();
    if (weights == nullptr) {
      phases::sumsq(run, g, nullptr, eta_of(eta), out, accumulate != 0);
      return;
    }
    const ListView w = list(weights).view();
    phases::sumsq(run, g, &w, eta_of(eta), out, accumulate != 0);
  });
}

int xsam_emu_final_sums(const void* points, const void* backups, const void* grads,
                        double* out, int accumulate, double eta, char* err, int64_t errlen) {
  return guarded(err, errlen, [&] {
    EmulatedRunner run;
    phases::final_sums(run, list(points).view(), list(backups).view(), list(grads).view(),
                       eta_of(eta), out, accumulate != 0);
  });
}

void xsam_emu_ascent_scalars(double* sc, int first, int check) {
  xsam_scalars::ascent_scalars(sc, first != 0, check != 0);
  ++g_launches;
}

void xsam_emu_update_scalars(double* sc, int check) {
  xsam_scalars::update_scalars(sc, check != 0);
  ++g_launches;
}

void xsam_emu_plain_scalars(double* sc, int check) {
  xsam_scalars::plain_scalars(sc, check != 0);
  ++g_launches;
}

int xsam_emu_backup_ascent(const void* params, const void* grads, const void* backups,
                           const double* sc, const double* hyper, int backup, double eta,
                           char* err, int64_t errlen) {
  return guarded(err, errlen, [&] {
    if (list(params).layout->size() == 0) return;
    EmulatedRunner run;
    phases::backup_ascent(run, list(params).view(), list(grads).view(), list(backups).view(), sc,
                          hyper, backup != 0, eta_of(eta));
  });
}

int xsam_emu_write_point(const void* out, const void* points, const void* backups,
                         const void* grads, const double* coeffs, double eta, char* err,
                         int64_t errlen) {
  return guarded(err, errlen, [&] {
    if (list(out).layout->size() == 0) return;
    EmulatedRunner run;
    phases::write_point(run, list(out).view(), list(points).view(), list(backups).view(),
                        list(grads).view(), coeffs, eta_of(eta));
  });
}

int xsam_emu_write_grad_restore(const void* params, const void* points, const void* backups,
                                const void* grads, const double* coeffs, double eta, char* err,
                                int64_t errlen) {
  return guarded(err, errlen, [&] {
    if (list(params).layout->size() == 0) return;
    EmulatedRunner run;
    phases::write_grad_restore(run, list(params).view(), list(points).view(),
                               list(backups).view(), list(grads).view(), coeffs, eta_of(eta));
  });
}

int xsam_emu_sgd_update(const void* params, const void* points, const void* backups,
                        const void* grads, const void* bufs, const double* sc,
                        const double* hyper, int weight_decay, int momentum, int nesterov,
                        int maximize, int init_bufs, double eta, char* err, int64_t errlen) {
  return guarded(err, errlen, [&] {
    if (list(params).layout->size() == 0) return;
    EmulatedRunner run;
    const ListView b = bufs != nullptr ? list(bufs).view() : ListView{};
    phases::sgd_update(run, list(params).view(), list(points).view(), list(backups).view(),
                       list(grads).view(), bufs != nullptr ? &b : nullptr, sc, hyper,
                       weight_decay != 0, momentum != 0, nesterov != 0, maximize != 0,
                       init_bufs != 0, eta_of(eta));
  });
}

int xsam_emu_adam_update(const void* params, const void* points, const void* backups,
                         const void* grads, const void* exp_avgs, const void* exp_avg_sqs,
                         const void* steps, int steps_double, const double* sc,
                         const double* hyper, int weight_decay, int decoupled, int maximize,
                         double eta, char* err, int64_t errlen) {
  return guarded(err, errlen, [&] {
    if (list(params).layout->size() == 0) return;
    EmulatedRunner run;
    phases::adam_update(run, list(params).view(), list(points).view(), list(backups).view(),
                        list(grads).view(), list(exp_avgs).view(), list(exp_avg_sqs).view(),
                        steps, steps_double != 0, sc, hyper, weight_decay != 0, decoupled != 0,
                        maximize != 0, eta_of(eta));
  });
}

// the emulated GPU (multiprocessors, resident blocks per multiprocessor)
void xsam_emu_set_device(int sm_count, int blocks_per_sm) {
  g_sm_count = sm_count;
  g_blocks_per_sm = blocks_per_sm;
}
int64_t xsam_emu_launch_count() { return g_launches; }
int64_t xsam_emu_last_grid() { return g_last_grid; }

// The constants the Python side must agree with, as "NAME=value" words under the names of
// xsam_fast/backends/base.py (CHUNK and THREADS: the launch geometry).
const char* xsam_emu_constants() {
  namespace xs = xsam_scalars;
  static const std::string text = [] {
    const std::pair<const char*, int64_t> named[] = {
        {"CHUNK", kChunk},          {"THREADS", kThreads},          {"NSCALARS", xs::kNumScalars},
        {"NHYPER", xs::kNumHyper},  {"SUMSQ", xs::kSumSq},          {"GG", xs::kGG},
        {"DD", xs::kDD},            {"DG", xs::kDG},                {"PSI", xs::kPsi},
        {"NORM_G", xs::kNormG},     {"NORM_D", xs::kNormD},         {"C_D", xs::kCD},
        {"C_G", xs::kCG},           {"FOUND_INF", xs::kFoundInf},   {"OK", xs::kOk},
        {"EPS", xs::kEps},          {"MAX_NORM", xs::kMaxNorm},     {"ALPHA", xs::kAlpha},
        {"SKIPPED", xs::kSkipped},  {"H_RADIUS", xs::kRadius},      {"H_LR", xs::kLr},
        {"H_WEIGHT_DECAY", xs::kWeightDecay}, {"H_MOMENTUM", xs::kMomentum},
        {"H_DAMPENING", xs::kDampening}, {"H_BETA1", xs::kBeta1},   {"H_BETA2", xs::kBeta2},
        {"H_ADAM_EPS", xs::kAdamEps}};
    std::string out;
    for (const auto& [name, value] : named)
      out += std::string(name) + "=" + std::to_string(value) + " ";
    return out;
  }();
  return text.c_str();
}

}  // extern "C"
