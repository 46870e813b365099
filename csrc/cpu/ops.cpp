// Multi-tensor launcher: splits a bucket into work items of kItem elements
// (small tensors share an item, big ones span several), runs the items in
// parallel and, for reductions, adds the per-item partial sums in item order,
// so results do not depend on the number of threads.
#include "ops.h"

#include <array>
#include <atomic>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "kernel_table.h"

namespace xsam_cpu {
namespace {

constexpr int64_t kItem = 1 << 15;  // elements per work item
// Fewest work items a thread is given: a bucket of up to this many items (128K
// elements) runs on the calling thread, where a parallel region would cost more than
// it saves. Results do not depend on it (partial sums are per item).
constexpr int64_t kGrain = 4;

struct Segment {
  int64_t tensor, start, len;
};

// Work items as ranges of segments: item i holds segments [first[i], first[i + 1]).
struct Plan {
  std::vector<Segment> segments;
  std::vector<int64_t> first;
  int64_t items() const { return static_cast<int64_t>(first.size()) - 1; }
};

Plan make_plan(const TensorList& ts) {
  Plan plan;
  plan.first.push_back(0);
  int64_t room = kItem;
  for (int64_t t = 0; t < static_cast<int64_t>(ts.size()); ++t) {
    int64_t n = ts[t].numel(), start = 0;
    while (start < n) {
      int64_t len = std::min(room, n - start);
      plan.segments.push_back({t, start, len});
      start += len;
      room -= len;
      if (room == 0) {
        plan.first.push_back(static_cast<int64_t>(plan.segments.size()));
        room = kItem;
      }
    }
  }
  if (room != kItem) plan.first.push_back(static_cast<int64_t>(plan.segments.size()));
  return plan;
}

DType dtype_of(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::Float;
    case at::kDouble: return DType::Double;
    case at::kBFloat16: return DType::BFloat16;
    case at::kHalf: return DType::Half;
    default: TORCH_CHECK(false, "xsam_fast cpu backend: unsupported dtype ", st);
  }
}

// ------------------------------------------------------------------ instruction sets
enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512"};

bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  switch (isa) {
    case kGeneric: return true;
    case kAvx2: return avx2;
    case kAvx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return isa == kGeneric;
#endif
}

Isa best_isa() {
  for (Isa isa : {kAvx512, kAvx2})
    if (cpu_has(isa)) return isa;
  return kGeneric;
}

std::atomic<int>& current_isa() {
  static std::atomic<int> isa{best_isa()};
  return isa;
}

const Kernels& kernels_for(at::ScalarType st) {
  const DType dt = dtype_of(st);
  switch (current_isa().load(std::memory_order_relaxed)) {
    case kAvx512: return avx512::kernels(dt);
    case kAvx2: return avx2::kernels(dt);
    default: return generic::kernels(dt);
  }
}

// ------------------------------------------------------------------ arguments
// Checks that every list has the reference list's length, and each tensor its
// element count, dtype, device (CPU) and contiguity.
void check(const char* op, const TensorList& ref, std::initializer_list<const TensorList*> others) {
  for (const TensorList* list : others)
    TORCH_CHECK(list->size() == ref.size(), op, ": tensor lists differ in length");
  for (size_t i = 0; i < ref.size(); ++i) {
    const at::Tensor& r = ref[i];
    for (const TensorList* list : others) {
      const at::Tensor& t = (*list)[i];
      TORCH_CHECK(t.device().is_cpu(), op, ": tensors must be on the CPU");
      TORCH_CHECK(t.scalar_type() == r.scalar_type(), op, ": tensors of one call must share a dtype");
      TORCH_CHECK(t.numel() == r.numel(), op, ": tensor ", i, " differs in size across lists");
      TORCH_CHECK(t.is_contiguous(), op, ": tensors must be contiguous");
    }
  }
}

Geometry geometry(Eta eta) { return eta ? Geometry{true, *eta} : Geometry{false, 0.0}; }

template <typename T>
T* at_offset(const at::Tensor& t, int64_t start) {
  return reinterpret_cast<T*>(static_cast<char*>(t.data_ptr()) + start * t.element_size());
}

// Element i of a small CPU scalar tensor (0-d or 1-d, any stride), read on the host.
double scalar_at(const at::Tensor& t, int64_t i) {
  const int64_t stride = t.dim() == 0 ? 0 : t.stride(0);
  switch (t.scalar_type()) {
    case at::kFloat: return static_cast<double>(t.data_ptr<float>()[i * stride]);
    case at::kDouble: return t.data_ptr<double>()[i * stride];
    default: return t.reshape({-1})[i].item<double>();
  }
}

double read_scale(const at::Tensor& scale) {
  TORCH_CHECK(scale.device().is_cpu() && scale.numel() == 1 && scale.dim() <= 1,
              "scale must be a CPU tensor of one value");
  return scalar_at(scale, 0);
}

std::pair<double, double> read_coeffs(const at::Tensor& coeffs) {
  TORCH_CHECK(coeffs.device().is_cpu() && coeffs.numel() == 2 && coeffs.dim() == 1,
              "coeffs must be a 1-d CPU tensor of 2 values");
  return {scalar_at(coeffs, 0), scalar_at(coeffs, 1)};
}

at::ScalarType acc_type(const TensorList& ts) {
  return !ts.empty() && ts[0].scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// ------------------------------------------------------------------ execution
// Runs fn(segment) for every segment, items in parallel.
template <typename Fn>
void for_each_segment(const Plan& plan, Fn fn) {
  at::parallel_for(0, plan.items(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      for (int64_t s = plan.first[i]; s < plan.first[i + 1]; ++s) fn(plan.segments[s]);
  });
}

// Per-item partial sums of K values, added in item order.
template <int K, typename Fn>
std::array<double, K> reduce(const Plan& plan, Fn fn) {
  std::vector<double> partial(static_cast<size_t>(plan.items()) * K, 0.0);
  at::parallel_for(0, plan.items(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t s = plan.first[i]; s < plan.first[i + 1]; ++s) {
        double out[K];
        fn(plan.segments[s], out);
        for (int k = 0; k < K; ++k) partial[i * K + k] += out[k];
      }
    }
  });
  std::array<double, K> total{};
  for (int64_t i = 0; i < plan.items(); ++i)
    for (int k = 0; k < K; ++k) total[k] += partial[i * K + k];
  return total;
}

template <size_t K>
at::Tensor sums_tensor(const std::array<double, K>& total, at::ScalarType acc, bool scalar) {
  at::Tensor out = scalar ? at::empty({}, at::TensorOptions().dtype(acc))
                          : at::empty({static_cast<int64_t>(K)}, at::TensorOptions().dtype(acc));
  for (size_t k = 0; k < K; ++k) {
    if (acc == at::kDouble) out.data_ptr<double>()[k] = total[k];
    else out.data_ptr<float>()[k] = static_cast<float>(total[k]);
  }
  return out;
}

}  // namespace

std::string isa() { return kIsaNames[current_isa().load()]; }

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (Isa isa : {kAvx512, kAvx2, kGeneric})
    if (cpu_has(isa)) names.push_back(kIsaNames[isa]);
  return names;
}

std::string set_isa(const std::string& name) {
  Isa isa = best_isa();
  if (name != "auto") {
    bool found = false;
    for (Isa i : {kGeneric, kAvx2, kAvx512}) {
      if (name == kIsaNames[i]) {
        isa = i;
        found = true;
      }
    }
    TORCH_CHECK_VALUE(found, "unknown instruction set ", name,
                      "; use auto, avx512, avx2 or generic");
    TORCH_CHECK_VALUE(cpu_has(isa), "this CPU cannot run the ", name, " kernels");
  }
  current_isa().store(isa);
  return kIsaNames[isa];
}

// ------------------------------------------------------------------ phases
at::Tensor sumsq(const TensorList& grads, const std::optional<TensorList>& weights, Eta eta) {
  check("sumsq", grads, {&grads});
  TORCH_CHECK_VALUE(!eta || weights, "sumsq with eta needs the weights (theta_0) that T is made of");
  if (eta) check("sumsq", grads, {&*weights});
  if (grads.empty()) return at::zeros({}, at::kFloat);
  const Kernels& k = kernels_for(grads[0].scalar_type());
  const Geometry geo = geometry(eta);
  auto total = reduce<1>(make_plan(grads), [&](const Segment& s, double* out) {
    const void* w = eta ? at_offset<const void>((*weights)[s.tensor], s.start) : nullptr;
    k.sumsq(at_offset<const void>(grads[s.tensor], s.start), w, geo, s.len, out);
  });
  return sums_tensor(total, acc_type(grads), /*scalar=*/true);
}

void backup_ascent(const TensorList& params, const TensorList& grads, const TensorList& backups,
                   const at::Tensor& scale, bool backup, Eta eta) {
  check("backup_ascent", params, {&params, &grads, &backups});
  if (params.empty()) return;
  const Kernels& k = kernels_for(params[0].scalar_type());
  const double sc = read_scale(scale);
  const Geometry geo = geometry(eta);
  for_each_segment(make_plan(params), [&](const Segment& s) {
    k.backup_ascent(at_offset<void>(params[s.tensor], s.start),
                    at_offset<const void>(grads[s.tensor], s.start),
                    at_offset<void>(backups[s.tensor], s.start), sc, backup, geo, s.len);
  });
}

at::Tensor final_sums(const TensorList& points, const TensorList& backups,
                      const TensorList& grads, Eta eta) {
  check("final_sums", points, {&points, &backups, &grads});
  if (points.empty()) return at::zeros({3}, at::kFloat);
  const Kernels& k = kernels_for(points[0].scalar_type());
  const Geometry geo = geometry(eta);
  auto total = reduce<3>(make_plan(points), [&](const Segment& s, double* out) {
    k.final_sums(at_offset<const void>(points[s.tensor], s.start),
                 at_offset<const void>(backups[s.tensor], s.start),
                 at_offset<const void>(grads[s.tensor], s.start), geo, s.len, out);
  });
  return sums_tensor(total, acc_type(points), /*scalar=*/false);
}

void write_point(const TensorList& out, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const at::Tensor& coeffs, Eta eta) {
  check("write_point", out, {&out, &points, &backups, &grads});
  if (out.empty()) return;
  const Kernels& k = kernels_for(out[0].scalar_type());
  auto [cd, cg] = read_coeffs(coeffs);
  const Geometry geo = geometry(eta);
  for_each_segment(make_plan(out), [&](const Segment& s) {
    k.write_point(at_offset<void>(out[s.tensor], s.start),
                  at_offset<const void>(points[s.tensor], s.start),
                  at_offset<const void>(backups[s.tensor], s.start),
                  at_offset<const void>(grads[s.tensor], s.start), cd, cg, geo, s.len);
  });
}

void write_grad_restore(const TensorList& params, const TensorList& points,
                        const TensorList& backups, const TensorList& grads,
                        const at::Tensor& coeffs, Eta eta) {
  check("write_grad_restore", params, {&params, &points, &backups, &grads});
  if (params.empty()) return;
  const Kernels& k = kernels_for(params[0].scalar_type());
  auto [cd, cg] = read_coeffs(coeffs);
  const Geometry geo = geometry(eta);
  for_each_segment(make_plan(params), [&](const Segment& s) {
    k.write_grad_restore(at_offset<void>(params[s.tensor], s.start),
                         at_offset<const void>(points[s.tensor], s.start),
                         at_offset<const void>(backups[s.tensor], s.start),
                         at_offset<void>(grads[s.tensor], s.start), cd, cg, geo, s.len);
  });
}

void sgd_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                const TensorList& grads, const TensorList& bufs, const at::Tensor& coeffs,
                double lr, double weight_decay, double momentum, double dampening, bool nesterov,
                bool maximize, bool init_bufs, Eta eta) {
  if (momentum != 0.0) {
    check("sgd_update", params, {&params, &points, &backups, &grads, &bufs});
  } else {
    check("sgd_update", params, {&params, &points, &backups, &grads});
  }
  if (params.empty()) return;
  const Kernels& k = kernels_for(params[0].scalar_type());
  auto [cd, cg] = read_coeffs(coeffs);
  const SgdArgs args{lr, weight_decay, momentum, dampening, nesterov, maximize, init_bufs};
  const Geometry geo = geometry(eta);
  for_each_segment(make_plan(params), [&](const Segment& s) {
    void* buf = momentum != 0.0 ? at_offset<void>(bufs[s.tensor], s.start) : nullptr;
    k.sgd(at_offset<void>(params[s.tensor], s.start),
          at_offset<const void>(points[s.tensor], s.start),
          at_offset<const void>(backups[s.tensor], s.start),
          at_offset<const void>(grads[s.tensor], s.start), buf, cd, cg, args, geo, s.len);
  });
}

void adam_update(const TensorList& params, const TensorList& points, const TensorList& backups,
                 const TensorList& grads, const TensorList& exp_avgs,
                 const TensorList& exp_avg_sqs, const at::Tensor& coeffs, double lr,
                 double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                 bool maximize, double step_size, double bias_correction2_sqrt, Eta eta) {
  check("adam_update", params, {&params, &points, &backups, &grads, &exp_avgs, &exp_avg_sqs});
  if (params.empty()) return;
  const Kernels& k = kernels_for(params[0].scalar_type());
  auto [cd, cg] = read_coeffs(coeffs);
  const AdamArgs args{lr, beta1, beta2, eps, weight_decay, step_size, bias_correction2_sqrt,
                      decoupled, maximize};
  const Geometry geo = geometry(eta);
  for_each_segment(make_plan(params), [&](const Segment& s) {
    k.adam(at_offset<void>(params[s.tensor], s.start),
           at_offset<const void>(points[s.tensor], s.start),
           at_offset<const void>(backups[s.tensor], s.start),
           at_offset<const void>(grads[s.tensor], s.start),
           at_offset<void>(exp_avgs[s.tensor], s.start),
           at_offset<void>(exp_avg_sqs[s.tensor], s.start), cd, cg, args, geo, s.len);
  });
}

}  // namespace xsam_cpu
