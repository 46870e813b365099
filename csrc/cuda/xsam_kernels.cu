// The host side of the CUDA backend's phases: argument checks, the device guard and
// current stream, and the runner that launches the kernels (kernels.cuh) for the phase
// dispatch shared with the host emulation (phases.cuh).
//
// Every phase is one multi-tensor launch (a reduction adds one cleanup launch), whatever
// the number of tensors and chunks: the launch reads the lists' pointer tables and the
// layout's work table from device memory, and its grid is min(items, blocks per SM * SMs)
// blocks (both queried once per device and kernel). Nothing synchronises with the host;
// everything a step changes (device scalars, hyper-parameters, Adam's steps) is read by
// the kernels from device memory, so the launches can be captured in a CUDA graph.
#include <array>
#include <atomic>
#include <stdexcept>
#include <string>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels.cuh"
#include "phases.cuh"
#include "xsam_cuda.h"

namespace xsam_cuda {
namespace {

std::atomic<int64_t> g_launches{0};
std::atomic<int64_t> g_last_grid{0};

constexpr int kMaxDevices = 64;

// A per-device value computed once (the first call for a device computes it).
class PerDevice {
 public:
  template <typename F>
  int get(int device, F&& compute) {
    TORCH_CHECK(device >= 0 && device < kMaxDevices, "xsam_fast cuda backend: device index ",
                device, " out of range");
    int v = values_[device].load(std::memory_order_acquire);
    if (v == 0) {
      v = compute();
      values_[device].store(v, std::memory_order_release);
    }
    return v;
  }

 private:
  std::array<std::atomic<int>, kMaxDevices> values_{};
};

// Resident blocks per multiprocessor of one kernel instantiation (at least 1).
template <typename T, int DEPTH, typename Op>
int blocks_per_sm(int device) {
  static PerDevice cache;
  return cache.get(device, [] {
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &blocks, multi_tensor_kernel<T, DEPTH, Op>, kThreads, 0));
    return blocks > 0 ? blocks : 1;
  });
}

void count_launch() {
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  g_launches.fetch_add(1, std::memory_order_relaxed);
}

// Launches the phases of phases.cuh on `device`'s current stream.
struct CudaRunner {
  int device;
  cudaStream_t stream;

  template <typename T, int DEPTH, typename Op>
  int64_t grid(const Tables<DEPTH>& t) const {
    const int64_t blocks =
        grid_size(t.nitems, blocks_per_sm<T, DEPTH, Op>(device), sm_count(device));
    if (blocks > 0) g_last_grid.store(blocks, std::memory_order_relaxed);
    return blocks;
  }

  template <typename T, int DEPTH, typename Op>
  void elementwise(const Tables<DEPTH>& t, const Op& op) {
    static_assert(Op::kDepth == DEPTH && Op::kSums == 0, "functor and launch disagree");
    const int64_t blocks = grid<T, DEPTH, Op>(t);
    if (blocks == 0) return;
    multi_tensor_kernel<T, DEPTH, Op>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(t, op, nullptr);
    count_launch();
  }

  template <typename T, int DEPTH, typename Op>
  void reduce(const Tables<DEPTH>& t, const Op& op, double* out, bool accumulate) {
    static_assert(Op::kDepth == DEPTH && Op::kSums > 0, "functor and launch disagree");
    using A = acc_t<T>;
    constexpr int N = Op::kSums;
    const at::Tensor partials =
        at::empty({N * (t.nitems > 0 ? t.nitems : 1)},
                  at::TensorOptions()
                      .device(at::kCUDA, static_cast<c10::DeviceIndex>(device))
                      .dtype(std::is_same_v<A, double> ? at::kDouble : at::kFloat));
    A* part = static_cast<A*>(partials.data_ptr());
    const int64_t blocks = grid<T, DEPTH, Op>(t);
    if (blocks > 0) {
      multi_tensor_kernel<T, DEPTH, Op>
          <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(t, op, part);
      count_launch();
    }
    // with no item the cleanup writes (or adds) zeros
    sum_partials_kernel<A, N><<<1, kThreads, 0, stream>>>(part, t.nitems, out, accumulate);
    count_launch();
  }
};

// ---------------------------------------------------------------- argument checks
// The device of a phase: its lists' (every list of a phase has the same layout, checked
// by phases.cuh), or `fallback`'s for empty lists.
int phase_device(const PackedList& first, const at::Tensor& fallback) {
  return static_cast<int>(first.size() > 0 ? first.device() : fallback.get_device());
}

// Argument errors are std::invalid_argument: ValueError in Python.
template <typename... X>
[[noreturn]] void value_fail(const char* phase, const X&... parts) {
  throw_with<std::invalid_argument>("xsam_fast cuda backend, ", phase, ": ", parts...);
}

std::string describe(const at::Tensor& t) {
  return t.defined() ? std::string(c10::toString(t.scalar_type())) + " tensor of " +
                           std::to_string(t.numel()) + " element(s) on " + t.device().str()
                     : std::string("None");
}

// A float64 tensor of `numel` elements, contiguous, on CUDA device `device`.
const at::Tensor& check_f64(const char* phase, const char* what, const at::Tensor& t,
                            int64_t numel, int device) {
  if (!(t.defined() && t.is_cuda() && t.get_device() == device &&
        t.scalar_type() == at::kDouble && t.numel() == numel && t.is_contiguous()))
    value_fail(phase, what, " must be a contiguous float64 tensor of ", numel,
               " element(s) on cuda:", device, "; got a ", describe(t));
  return t;
}

double* ptr_f64(const at::Tensor& t) { return t.data_ptr<double>(); }

CudaRunner runner(int device) {
  const auto index = static_cast<c10::DeviceIndex>(device);
  return CudaRunner{device, c10::cuda::getCurrentCUDAStream(index).stream()};
}

// The interpolation coefficients as float64 on `device` (a float tensor of 2 elements;
// converted on the device when it is not contiguous float64).
at::Tensor coeffs_f64(const char* phase, const at::Tensor& coeffs, int device) {
  if (!(coeffs.defined() && coeffs.is_cuda() && coeffs.get_device() == device &&
        coeffs.is_floating_point() && coeffs.numel() == 2))
    value_fail(phase, "coeffs must be a float tensor of 2 elements on cuda:", device,
               "; got a ", describe(coeffs));
  return coeffs.to(at::kDouble).contiguous();
}

}  // namespace

// ---------------------------------------------------------------- phases
void sumsq(const PackedList& grads, const at::Tensor& out, bool accumulate,
           const PackedList* weights, std::optional<double> eta) {
  const int device = phase_device(grads, out);
  check_f64("sumsq", "out", out, 1, device);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  CudaRunner run = runner(device);
  const ListView g = grads.view();
  if (weights == nullptr) {
    phases::sumsq(run, g, nullptr, eta, ptr_f64(out), accumulate);
    return;
  }
  const ListView w = weights->view();
  phases::sumsq(run, g, &w, eta, ptr_f64(out), accumulate);
}

void final_sums(const PackedList& points, const PackedList& backups, const PackedList& grads,
                const at::Tensor& out, bool accumulate, std::optional<double> eta) {
  const int device = phase_device(points, out);
  check_f64("final_sums", "out", out, 3, device);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  CudaRunner run = runner(device);
  phases::final_sums(run, points.view(), backups.view(), grads.view(), eta, ptr_f64(out),
                     accumulate);
}

namespace {
template <typename Kernel, typename... Args>
void launch_scalars(const char* phase, const at::Tensor& sc, Kernel kernel, Args... args) {
  if (!(sc.defined() && sc.is_cuda())) value_fail(phase, "sc must be a CUDA tensor");
  const int device = sc.get_device();
  check_f64(phase, "sc", sc, xsam_scalars::kNumScalars, device);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  kernel<<<1, 1, 0, runner(device).stream>>>(ptr_f64(sc), args...);
  count_launch();
}
}  // namespace

void ascent_scalars(const at::Tensor& sc, bool first, bool check) {
  launch_scalars("ascent_scalars", sc, ascent_scalars_kernel, first, check);
}

void update_scalars(const at::Tensor& sc, bool check) {
  launch_scalars("update_scalars", sc, update_scalars_kernel, check);
}

void plain_scalars(const at::Tensor& sc, bool check) {
  launch_scalars("plain_scalars", sc, plain_scalars_kernel, check);
}

void backup_ascent(const PackedList& params, const PackedList& grads, const PackedList& backups,
                   const at::Tensor& sc, const at::Tensor& hyper, bool backup,
                   std::optional<double> eta) {
  if (params.size() == 0) return;
  const int device = static_cast<int>(params.device());
  check_f64("backup_ascent", "sc", sc, xsam_scalars::kNumScalars, device);
  check_f64("backup_ascent", "hyper", hyper, xsam_scalars::kNumHyper, device);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  CudaRunner run = runner(device);
  phases::backup_ascent(run, params.view(), grads.view(), backups.view(), ptr_f64(sc),
                        ptr_f64(hyper), backup, eta);
}

void write_point(const PackedList& out, const PackedList& points, const PackedList& backups,
                 const PackedList& grads, const at::Tensor& coeffs, std::optional<double> eta) {
  if (out.size() == 0) return;
  const int device = static_cast<int>(out.device());
  const at::Tensor co = coeffs_f64("write_point", coeffs, device);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  CudaRunner run = runner(device);
  phases::write_point(run, out.view(), points.view(), backups.view(), grads.view(), ptr_f64(co),
                      eta);
}

void write_grad_restore(const PackedList& params, const PackedList& points,
                        const PackedList& backups, const PackedList& grads,
                        const at::Tensor& coeffs, std::optional<double> eta) {
  if (params.size() == 0) return;
  const int device = static_cast<int>(params.device());
  const at::Tensor co = coeffs_f64("write_grad_restore", coeffs, device);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  CudaRunner run = runner(device);
  phases::write_grad_restore(run, params.view(), points.view(), backups.view(), grads.view(),
                             ptr_f64(co), eta);
}

void sgd_update(const PackedList& params, const PackedList& points, const PackedList& backups,
                const PackedList& grads, const PackedList* bufs, const at::Tensor& sc,
                const at::Tensor& hyper, bool weight_decay, bool momentum, bool nesterov,
                bool maximize, bool init_bufs, std::optional<double> eta) {
  if (params.size() == 0) return;
  const int device = static_cast<int>(params.device());
  check_f64("sgd_update", "sc", sc, xsam_scalars::kNumScalars, device);
  check_f64("sgd_update", "hyper", hyper, xsam_scalars::kNumHyper, device);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  CudaRunner run = runner(device);
  const ListView b = bufs != nullptr ? bufs->view() : ListView{};
  phases::sgd_update(run, params.view(), points.view(), backups.view(), grads.view(),
                     bufs != nullptr ? &b : nullptr, ptr_f64(sc), ptr_f64(hyper), weight_decay,
                     momentum, nesterov, maximize, init_bufs, eta);
}

void adam_update(const PackedList& params, const PackedList& points, const PackedList& backups,
                 const PackedList& grads, const PackedList& exp_avgs,
                 const PackedList& exp_avg_sqs, const at::Tensor& steps, const at::Tensor& sc,
                 const at::Tensor& hyper, bool weight_decay, bool decoupled, bool maximize,
                 std::optional<double> eta) {
  if (params.size() == 0) return;
  const int device = static_cast<int>(params.device());
  check_f64("adam_update", "sc", sc, xsam_scalars::kNumScalars, device);
  check_f64("adam_update", "hyper", hyper, xsam_scalars::kNumHyper, device);
  if (!(steps.defined() && steps.is_cuda() && steps.get_device() == device &&
        (steps.scalar_type() == at::kFloat || steps.scalar_type() == at::kDouble) &&
        steps.dim() == 1 && steps.numel() == params.size() && steps.is_contiguous()))
    value_fail("adam_update", "steps must be a contiguous 1-d float32 or float64 tensor of ",
               params.size(), " elements on cuda:", device, "; got a ", describe(steps));
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  CudaRunner run = runner(device);
  phases::adam_update(run, params.view(), points.view(), backups.view(), grads.view(),
                      exp_avgs.view(), exp_avg_sqs.view(), steps.data_ptr(),
                      steps.scalar_type() == at::kDouble, ptr_f64(sc), ptr_f64(hyper),
                      weight_decay, decoupled, maximize, eta);
}

// ---------------------------------------------------------------- for tests
int64_t launch_count() { return g_launches.load(); }

int64_t last_grid() { return g_last_grid.load(); }

int sm_count(int device) {
  static PerDevice cache;
  return cache.get(device, [device] {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count > 0 ? count : 1;
  });
}

}  // namespace xsam_cuda
