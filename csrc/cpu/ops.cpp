// The phases: argument checks, then the chunk kernels of the current instruction set run
// over the plan cached in the first list's layout (launch.h).
#include "ops.h"

#include <cstring>

#include <c10/util/Exception.h>

#include "host_scalars.h"
#include "isa.h"
#include "kernel_table.h"
#include "launch.h"

namespace xsam_cpu {
namespace {

namespace xs = xsam_scalars;

// The lists of one call: each checked to line up with the first (free when packed like
// it), and the address of a segment in any of them.
class Call {
 public:
  Call(const char* op, const PackedList& first)
      : layout(first.layout()),
        kernels(first.size() ? &kernels_for(layout.dtype) : nullptr),
        op_(op),
        first_(first),
        esize_(first.size() ? static_cast<int64_t>(c10::elementSize(layout.dtype)) : 0) {}

  // The data addresses of `list` (argument `name`), checked against the first list.
  char* const* operator()(PackedList& list, const char* name) const {
    list.check_matches(first_, op_, name);
    return list.data();
  }

  char* at(char* const* data, const Segment& s) const { return data[s.tensor] + s.start * esize_; }

  // dst <- src (bytes), e.g. params <- backups where FOUND_INF is set
  void copy(char* const* dst, char* const* src) const {
    for_each_segment(layout, [&](const Segment& s) {
      if (at(dst, s) != at(src, s)) std::memcpy(at(dst, s), at(src, s), s.len * esize_);
    });
  }

  // dst <- 0 (all bits 0 is +0.0 in every supported dtype)
  void zero(char* const* dst) const {
    for_each_segment(layout, [&](const Segment& s) { std::memset(at(dst, s), 0, s.len * esize_); });
  }

  const Layout& layout;
  const Kernels* kernels;  // null for an empty list (no segment to run)

 private:
  const char* op_;
  const PackedList& first_;
  int64_t esize_;
};

Geometry geometry(Eta eta) { return eta ? Geometry{true, *eta} : Geometry{false, 0.0}; }

bool found_inf(const double* sc) { return sc[xs::kFoundInf] != 0.0; }

}  // namespace

// ------------------------------------------------------------------ reductions
void sumsq(PackedList& grads, const at::Tensor& out, bool accumulate, PackedList* weights,
           Eta eta) {
  const SumsOut dst(out, 1, "sumsq");
  TORCH_CHECK_VALUE(!eta || weights, "sumsq with eta needs the weights (theta_0) that T is made of");
  const Call call("sumsq", grads);
  char* const* g = call(grads, "grads");
  char* const* w = eta ? call(*weights, "weights") : nullptr;
  const Geometry geo = geometry(eta);
  const auto total = reduce<1>(call.layout, [&](const Segment& s, double* o) {
    call.kernels->sumsq(call.at(g, s), w ? call.at(w, s) : nullptr, geo, s.len, o);
  });
  dst.put(0, total[0], accumulate);
}

void final_sums(PackedList& points, PackedList& backups, PackedList& grads,
                const at::Tensor& out, bool accumulate, Eta eta) {
  const SumsOut dst(out, 3, "final_sums");
  const Call call("final_sums", points);
  char* const* x = call(points, "points");
  char* const* b = call(backups, "backups");
  char* const* g = call(grads, "grads");
  const Geometry geo = geometry(eta);
  const auto total = reduce<3>(call.layout, [&](const Segment& s, double* o) {
    call.kernels->final_sums(call.at(x, s), call.at(b, s), call.at(g, s), geo, s.len, o);
  });
  for (int k = 0; k < 3; ++k) dst.put(k, total[k], accumulate);
}

// ------------------------------------------------------------------ scalars
void ascent_scalars(const at::Tensor& sc, bool first, bool check) {
  xs::ascent_scalars(scalars_of(sc), first, check);
}

void update_scalars(const at::Tensor& sc, bool check) { xs::update_scalars(scalars_of(sc), check); }

void plain_scalars(const at::Tensor& sc, bool check) { xs::plain_scalars(scalars_of(sc), check); }

// ------------------------------------------------------------------ elementwise
void backup_ascent(PackedList& params, PackedList& grads, PackedList& backups,
                   const at::Tensor& sc, const at::Tensor& hyper, bool backup, Eta eta) {
  const double* s = scalars_of(sc);
  const double* h = hyper_of(hyper);
  const Call call("backup_ascent", params);
  char* const* p = call(params, "params");
  char* const* g = call(grads, "grads");
  char* const* b = call(backups, "backups");
  if (found_inf(s)) {  // the ascent moves nothing; the backups are still taken
    if (backup) call.copy(b, p);
    return;
  }
  const double scale = xs::ascent_scale(s, h[xs::kRadius]);
  const Geometry geo = geometry(eta);
  for_each_segment(call.layout, [&](const Segment& seg) {
    call.kernels->backup_ascent(call.at(p, seg), call.at(g, seg), call.at(b, seg), scale, backup,
                                geo, seg.len);
  });
}

void write_point(PackedList& out, PackedList& points, PackedList& backups, PackedList& grads,
                 const at::Tensor& coeffs, Eta eta) {
  const auto [cd, cg] = pair_of(coeffs, "write_point");
  const Call call("write_point", out);
  char* const* o = call(out, "out");
  char* const* x = call(points, "points");
  char* const* b = call(backups, "backups");
  char* const* g = call(grads, "grads");
  const Geometry geo = geometry(eta);
  for_each_segment(call.layout, [&](const Segment& s) {
    call.kernels->write_point(call.at(o, s), call.at(x, s), call.at(b, s), call.at(g, s), cd, cg,
                              geo, s.len);
  });
}

void write_grad_restore(PackedList& params, PackedList& points, PackedList& backups,
                        PackedList& grads, const at::Tensor& coeffs, Eta eta) {
  const auto [cd, cg] = pair_of(coeffs, "write_grad_restore");
  const Call call("write_grad_restore", params);
  char* const* p = call(params, "params");
  char* const* x = call(points, "points");
  char* const* b = call(backups, "backups");
  char* const* g = call(grads, "grads");
  const Geometry geo = geometry(eta);
  for_each_segment(call.layout, [&](const Segment& s) {
    call.kernels->write_grad_restore(call.at(p, s), call.at(x, s), call.at(b, s), call.at(g, s),
                                     cd, cg, geo, s.len);
  });
}

void sgd_update(PackedList& params, PackedList& points, PackedList& backups, PackedList& grads,
                PackedList* bufs, const at::Tensor& sc, const at::Tensor& hyper,
                bool weight_decay, bool momentum, bool nesterov, bool maximize, bool init_bufs,
                Eta eta) {
  const double* s = scalars_of(sc);
  const double* h = hyper_of(hyper);
  TORCH_CHECK_VALUE(!momentum || bufs, "sgd_update: momentum=True needs the momentum bufs");
  const Call call("sgd_update", params);
  char* const* p = call(params, "params");
  char* const* x = call(points, "points");
  char* const* b = call(backups, "backups");
  char* const* g = call(grads, "grads");
  char* const* m = momentum ? call(*bufs, "bufs") : nullptr;
  if (found_inf(s)) {  // theta_0 back; the state as it was, fresh buffers 0
    call.copy(p, b);
    if (m && init_bufs) call.zero(m);
    return;
  }
  const SgdArgs args{h[xs::kLr], weight_decay ? h[xs::kWeightDecay] : 0.0, h[xs::kMomentum],
                     h[xs::kDampening], momentum, nesterov, maximize, init_bufs};
  const double cd = s[xs::kCD], cg = s[xs::kCG];
  const Geometry geo = geometry(eta);
  for_each_segment(call.layout, [&](const Segment& seg) {
    call.kernels->sgd(call.at(p, seg), call.at(x, seg), call.at(b, seg), call.at(g, seg),
                      m ? call.at(m, seg) : nullptr, cd, cg, args, geo, seg.len);
  });
}

void adam_update(PackedList& params, PackedList& points, PackedList& backups, PackedList& grads,
                 PackedList& exp_avgs, PackedList& exp_avg_sqs, const at::Tensor& steps,
                 const at::Tensor& sc, const at::Tensor& hyper, bool weight_decay,
                 bool decoupled, bool maximize, Eta eta) {
  const double* s = scalars_of(sc);
  const double* h = hyper_of(hyper);
  const Call call("adam_update", params);
  const auto per_tensor = adam_steps(steps, call.layout.tensors(), h);
  char* const* p = call(params, "params");
  char* const* x = call(points, "points");
  char* const* b = call(backups, "backups");
  char* const* g = call(grads, "grads");
  char* const* m = call(exp_avgs, "exp_avgs");
  char* const* v = call(exp_avg_sqs, "exp_avg_sqs");
  if (found_inf(s)) {  // theta_0 back; the moments as they were
    call.copy(p, b);
    return;
  }
  const AdamArgs args{h[xs::kLr], h[xs::kBeta1], h[xs::kBeta2], h[xs::kAdamEps],
                      weight_decay ? h[xs::kWeightDecay] : 0.0, 0.0, 0.0, decoupled, maximize};
  const double cd = s[xs::kCD], cg = s[xs::kCG];
  const Geometry geo = geometry(eta);
  for_each_segment(call.layout, [&](const Segment& seg) {
    AdamArgs a = args;
    a.step_size = per_tensor[seg.tensor].step_size;
    a.bias_correction2_sqrt = per_tensor[seg.tensor].bias_correction2_sqrt;
    call.kernels->adam(call.at(p, seg), call.at(x, seg), call.at(b, seg), call.at(g, seg),
                       call.at(m, seg), call.at(v, seg), cd, cg, a, geo, seg.len);
  });
}

}  // namespace xsam_cpu
