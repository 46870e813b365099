// The CUDA backend of xsam-fast: the host launchers of every phase (the one
// translation unit with kernels). They check the lists, pick the element type
// (dispatch.cuh), and run the phase's functor (xsam_functors.cuh) on the
// multi-tensor chunker (multi_tensor_apply.cuh) on the current stream.
//
// Math runs in acc_t<T> (float for float/half/bfloat16, double for double);
// 16-bit results are rounded to nearest even once, when stored. Scalar tensors
// (scale, coeffs) are read by the kernels from device memory: no host sync.
// Reductions are deterministic: per-block partials in fixed slots, summed by
// one cleanup block in a fixed order.
#include <array>
#include <atomic>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "dispatch.cuh"
#include "multi_tensor_apply.cuh"
#include "xsam_functors.cuh"
#include "xsam_cuda.h"

namespace xsam_cuda {
namespace {

std::atomic<int64_t> g_launches{0};

// ---------------------------------------------------------------- host side
template <int DEPTH>
using Lists = std::array<const TensorList*, DEPTH>;

// Same length everywhere; every tensor defined, on the device and with the
// dtype of the first, contiguous, and as large as its partner in list 0.
template <int DEPTH>
void check_lists(const char* phase, const Lists<DEPTH>& lists, const char* const (&names)[DEPTH]) {
  const TensorList& first = *lists[0];
  const size_t n = first.size();
  TORCH_CHECK(n > 0, "xsam_fast cuda backend, ", phase, ": empty tensor list");
  const at::Tensor& ref = first[0];
  TORCH_CHECK(ref.defined() && ref.is_cuda(), "xsam_fast cuda backend, ", phase,
              ": tensors must be CUDA tensors");
  for (int d = 0; d < DEPTH; ++d) {
    const TensorList& list = *lists[d];
    TORCH_CHECK(list.size() == n, "xsam_fast cuda backend, ", phase, ": ", names[d], " has ",
                list.size(), " tensors, ", names[0], " has ", n);
    for (size_t t = 0; t < n; ++t) {
      const at::Tensor& x = list[t];
      TORCH_CHECK(x.defined() && x.device() == ref.device() && x.scalar_type() == ref.scalar_type(),
                  "xsam_fast cuda backend, ", phase, ": ", names[d], "[", t,
                  "] must be a ", ref.scalar_type(), " tensor on ", ref.device());
      TORCH_CHECK(x.is_contiguous(), "xsam_fast cuda backend, ", phase, ": ", names[d], "[", t,
                  "] is not contiguous");
      TORCH_CHECK(x.numel() == first[t].numel(), "xsam_fast cuda backend, ", phase, ": ",
                  names[d], "[", t, "] has ", x.numel(), " elements, ", names[0], "[", t,
                  "] has ", first[t].numel());
    }
  }
}

// A device-resident scalar operand: acc dtype, on the lists' device, >= n elements.
at::Tensor check_scalar(const char* phase, const char* what, const at::Tensor& s,
                        const at::Tensor& like, int64_t n) {
  const auto acc = like.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(s.defined() && s.device() == like.device() && s.scalar_type() == acc &&
                  s.numel() >= n,
              "xsam_fast cuda backend, ", phase, ": ", what, " must be a ", acc, " tensor of ", n,
              " element(s) on ", like.device());
  return s.contiguous();
}

cudaStream_t current_stream(const at::Tensor& like) {
  return c10::cuda::getCurrentCUDAStream(like.device().index()).stream();
}

template <typename T, int DEPTH, typename Op>
void run(const Lists<DEPTH>& lists, const Op& op, acc_t<T>* partials, int64_t stride,
         cudaStream_t stream) {
  static_assert(Op::kDepth == DEPTH, "functor and lists disagree on depth");
  auto addr = [&](int d, int64_t t) { return (*lists[d])[t].data_ptr(); };
  auto numel = [&](int64_t t) { return (*lists[0])[t].numel(); };
  g_launches += multi_tensor_apply<T, DEPTH>(static_cast<int64_t>(lists[0]->size()), addr, numel,
                                             op, partials, stride, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int64_t count_chunks(const TensorList& tensors) {
  int64_t chunks = 0;
  for (const auto& t : tensors) chunks += (t.numel() + kChunk - 1) / kChunk;
  return chunks;
}

// A reduction phase: per-block partials, then one cleanup block; the result
// has `shape` (0-d or (NSUMS,)) and the accumulation dtype.
template <typename T, int DEPTH, typename Op>
at::Tensor reduce(const Lists<DEPTH>& lists, const Op& op, at::IntArrayRef shape) {
  using A = acc_t<T>;
  constexpr int N = Op::kSums;
  const at::Tensor& like = (*lists[0])[0];
  const auto options = like.options().dtype(c10::CppTypeToScalarType<A>::value);
  at::Tensor out = at::empty(shape, options);
  const cudaStream_t stream = current_stream(like);
  const int64_t chunks = count_chunks(*lists[0]);
  at::Tensor partials = at::empty({N * (chunks > 0 ? chunks : 1)}, options);
  if (chunks > 0) run<T, DEPTH>(lists, op, partials.data_ptr<A>(), chunks, stream);
  // with no element at all, the cleanup block writes zeros
  sum_partials_kernel<A, N><<<1, kThreads, 0, stream>>>(partials.data_ptr<A>(), chunks,
                                                         out.data_ptr<A>());
  ++g_launches;
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

template <typename A>
const A* scalar_ptr(const at::Tensor& s) {
  return s.data_ptr<A>();
}

}  // namespace

// ---------------------------------------------------------------- phases
at::Tensor sumsq(const TensorList& tensors, const TensorList& weights, std::optional<double> eta) {
  const c10::cuda::CUDAGuard guard(tensors.at(0).device());
  at::Tensor out;
  dispatch_floating(tensors[0].scalar_type(), "sumsq", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (eta) {  // ||T g||^2, T = |weights| + eta
      const Lists<2> lists{&tensors, &weights};
      check_lists<2>("sumsq", lists, {"tensors", "weights"});
      SumSqOp<T, true> op{};
      op.eta = static_cast<acc_t<T>>(*eta);
      out = reduce<T, 2>(lists, op, {});
      return;
    }
    const Lists<1> lists{&tensors};
    check_lists<1>("sumsq", lists, {"tensors"});
    out = reduce<T, 1>(lists, SumSqOp<T>{}, {});
  });
  return out;
}

void backup_ascent(const TensorList& params, const TensorList& grads, const TensorList& backups,
                   const at::Tensor& scale, bool backup, std::optional<double> eta) {
  const c10::cuda::CUDAGuard guard(params.at(0).device());
  dispatch_floating(params[0].scalar_type(), "backup_ascent", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const at::Tensor s = check_scalar("backup_ascent", "scale", scale, params[0], 1);
    const cudaStream_t stream = current_stream(params[0]);
    if (eta) {  // ASAM: the backups are read (T) or written (backup) in any case
      const Lists<3> lists{&params, &grads, &backups};
      check_lists<3>("backup_ascent", lists, {"params", "grads", "backups"});
      auto launch = [&](auto op) {
        op.scale_ptr = scalar_ptr<A>(s);
        op.eta = static_cast<A>(*eta);
        run<T, 3>(lists, op, nullptr, 0, stream);
      };
      if (backup)
        launch(AscentOp<T, true, true>{});
      else
        launch(AscentOp<T, false, true>{});
    } else if (backup) {
      const Lists<3> lists{&params, &grads, &backups};
      check_lists<3>("backup_ascent", lists, {"params", "grads", "backups"});
      AscentOp<T, true> op{};
      op.scale_ptr = scalar_ptr<A>(s);
      run<T, 3>(lists, op, nullptr, 0, stream);
    } else {
      const Lists<2> lists{&params, &grads};
      check_lists<2>("backup_ascent", lists, {"params", "grads"});
      AscentOp<T, false> op{};
      op.scale_ptr = scalar_ptr<A>(s);
      run<T, 2>(lists, op, nullptr, 0, stream);
    }
  });
}

at::Tensor final_sums(const TensorList& points, const TensorList& backups,
                      const TensorList& grads, std::optional<double> eta) {
  const Lists<3> lists{&points, &backups, &grads};
  check_lists<3>("final_sums", lists, {"points", "backups", "grads"});
  const c10::cuda::CUDAGuard guard(points[0].device());
  at::Tensor out;
  dispatch_floating(points[0].scalar_type(), "final_sums", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (eta) {
      FinalSumsOp<T, true> op{};
      op.eta = static_cast<acc_t<T>>(*eta);
      out = reduce<T, 3>(lists, op, {3});
    } else {
      out = reduce<T, 3>(lists, FinalSumsOp<T>{}, {3});
    }
  });
  return out;
}

namespace {
// Runs an interpolation functor (WritePointOp / WriteGradRestoreOp) plain or adaptive.
template <template <typename, bool> class Op>
void interpolate(const char* phase, const TensorList& out, const TensorList& points,
                 const TensorList& backups, const TensorList& grads, const at::Tensor& coeffs,
                 std::optional<double> eta, const char* const (&names)[4]) {
  const Lists<4> lists{&out, &points, &backups, &grads};
  check_lists<4>(phase, lists, names);
  const c10::cuda::CUDAGuard guard(out[0].device());
  const at::Tensor co = check_scalar(phase, "coeffs", coeffs, out[0], 2);
  dispatch_floating(out[0].scalar_type(), phase, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto launch = [&](auto op) {
      op.c.ptr = scalar_ptr<acc_t<T>>(co);
      op.c.eta = static_cast<acc_t<T>>(eta.value_or(0.0));
      run<T, 4>(lists, op, nullptr, 0, current_stream(out[0]));
    };
    if (eta)
      launch(Op<T, true>{});
    else
      launch(Op<T, false>{});
  });
}
}  // namespace

void write_point(const TensorList& out, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const at::Tensor& coeffs, std::optional<double> eta) {
  interpolate<WritePointOp>("write_point", out, points, backups, grads, coeffs, eta,
                            {"out", "points", "backups", "grads"});
}

void write_grad_restore(const TensorList& params, const TensorList& points,
                        const TensorList& backups, const TensorList& grads,
                        const at::Tensor& coeffs, std::optional<double> eta) {
  interpolate<WriteGradRestoreOp>("write_grad_restore", params, points, backups, grads, coeffs,
                                  eta, {"params", "points", "backups", "grads"});
}

namespace {
template <typename T, bool MOMENTUM, bool INIT, int DEPTH>
void sgd_launch(const Lists<DEPTH>& lists, const at::Tensor& co, double lr, double weight_decay,
                double momentum, double dampening, bool nesterov, bool maximize,
                std::optional<double> eta) {
  const cudaStream_t stream = current_stream((*lists[0])[0]);
  if (eta) {
    const auto op = SgdOp<T, MOMENTUM, INIT, true>::make(
        scalar_ptr<acc_t<T>>(co), lr, weight_decay, momentum, dampening, nesterov, maximize, *eta);
    run<T, DEPTH>(lists, op, nullptr, 0, stream);
    return;
  }
  const auto op = SgdOp<T, MOMENTUM, INIT>::make(scalar_ptr<acc_t<T>>(co), lr, weight_decay,
                                                 momentum, dampening, nesterov, maximize);
  run<T, DEPTH>(lists, op, nullptr, 0, stream);
}
}  // namespace

void sgd_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                const TensorList& grads, const TensorList& bufs, const at::Tensor& coeffs,
                double lr, double weight_decay, double momentum, double dampening, bool nesterov,
                bool maximize, bool init_bufs, std::optional<double> eta) {
  const c10::cuda::CUDAGuard guard(params.at(0).device());
  const at::Tensor co = check_scalar("sgd_update", "coeffs", coeffs, params[0], 2);
  dispatch_floating(params[0].scalar_type(), "sgd_update", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (momentum == 0.0) {
      const Lists<4> lists{&params, &points, &backups, &grads};
      check_lists<4>("sgd_update", lists, {"params", "points", "backups", "grads"});
      sgd_launch<T, false, false, 4>(lists, co, lr, weight_decay, momentum, dampening, nesterov,
                                     maximize, eta);
      return;
    }
    const Lists<5> lists{&params, &points, &backups, &grads, &bufs};
    check_lists<5>("sgd_update", lists, {"params", "points", "backups", "grads", "bufs"});
    if (init_bufs)
      sgd_launch<T, true, true, 5>(lists, co, lr, weight_decay, momentum, dampening, nesterov,
                                   maximize, eta);
    else
      sgd_launch<T, true, false, 5>(lists, co, lr, weight_decay, momentum, dampening, nesterov,
                                    maximize, eta);
  });
}

void adam_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const TensorList& exp_avgs,
                 const TensorList& exp_avg_sqs, const at::Tensor& coeffs, double lr, double beta1,
                 double beta2, double eps, double weight_decay, bool decoupled, bool maximize,
                 double step_size, double bias_correction2_sqrt, std::optional<double> eta) {
  const Lists<6> lists{&params, &points, &backups, &grads, &exp_avgs, &exp_avg_sqs};
  check_lists<6>("adam_update", lists,
                 {"params", "points", "backups", "grads", "exp_avgs", "exp_avg_sqs"});
  const c10::cuda::CUDAGuard guard(params[0].device());
  const at::Tensor co = check_scalar("adam_update", "coeffs", coeffs, params[0], 2);
  dispatch_floating(params[0].scalar_type(), "adam_update", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using A = acc_t<T>;
    const cudaStream_t stream = current_stream(params[0]);
    if (eta) {
      const auto op = AdamOp<T, true>::make(scalar_ptr<A>(co), lr, beta1, beta2, eps,
                                            weight_decay, decoupled, maximize, step_size,
                                            bias_correction2_sqrt, *eta);
      run<T, 6>(lists, op, nullptr, 0, stream);
      return;
    }
    const auto op = AdamOp<T>::make(scalar_ptr<A>(co), lr, beta1, beta2, eps, weight_decay,
                                    decoupled, maximize, step_size, bias_correction2_sqrt);
    run<T, 6>(lists, op, nullptr, 0, stream);
  });
}

int64_t launch_count() { return g_launches.load(); }

}  // namespace xsam_cuda
