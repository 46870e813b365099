// The phases of the backend contract (xsam_fast/backends/base.py) as functor launches:
// which functor, with which template switches and lists, for which call. Shared by the
// extension (xsam_kernels.cu, whose runner launches kernels on the GPU) and the host
// emulation (emulation/host_emulation.cu, whose runner walks the same grid on the CPU).
//
// A Runner provides
//   template <typename T, int DEPTH, typename Op>
//   void elementwise(const Tables<DEPTH>&, const Op&);
//   template <typename T, int DEPTH, typename Op>
//   void reduce(const Tables<DEPTH>&, const Op&, double* out, bool accumulate);
// Pointers (lists' tables, sc, hyper, steps, coeffs, out) are in the memory the runner's
// kernels read. Arguments are checked here as far as they are plain values; the caller
// checks the tensors it turns into pointers.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "dtype_dispatch.h"
#include "list_layout.h"
#include "work_table.h"
#include "xsam_functors.cuh"

namespace xsam_cuda {

namespace phases {

template <int DEPTH>
Tables<DEPTH> tables(const std::array<const ListView*, DEPTH>& lists) {
  Tables<DEPTH> t{};
  for (int d = 0; d < DEPTH; ++d) t.ptrs[d] = lists[d]->ptrs;
  t.items = lists[0]->items;
  t.nitems = static_cast<int64_t>(lists[0]->layout->items().size());
  return t;
}

template <int N>
void line_up(const char* phase, const std::array<const ListView*, N>& lists,
             const std::array<const char*, N>& names) {
  std::array<const Layout*, N> layouts;
  for (int k = 0; k < N; ++k) layouts[k] = lists[k]->layout;
  Layout::check_line_up(phase, layouts.data(), names.data(), N);
}

// ASAM's eta as a template switch: f(std::bool_constant<adaptive>{}, eta in acc type).
template <typename F>
void with_eta(const char* phase, std::optional<double> eta, F&& f) {
  if (!eta) {
    f(std::false_type{}, 0.0);
    return;
  }
  if (!(*eta > 0.0) || !std::isfinite(*eta))
    throw std::invalid_argument(std::string(phase) + ": eta must be a finite number > 0, got " +
                                std::to_string(*eta));
  f(std::true_type{}, *eta);
}

template <typename F>
void with_flag(bool flag, F&& f) {
  if (flag)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// out[0] (=, or += if accumulate) sum of grads^2; ASAM: of ((|weights| + eta) grads)^2
template <typename Runner>
void sumsq(Runner& run, const ListView& grads, const ListView* weights,
           std::optional<double> eta, double* out, bool accumulate) {
  if (eta && weights == nullptr)
    throw std::invalid_argument("sumsq with eta needs the weights (theta_0) that T is made of");
  if (weights != nullptr) line_up<2>("sumsq", {&grads, weights}, {"grads", "weights"});
  dispatch_dtype(grads.layout->dtype(), [&](auto tag) {
    using T = typename std::decay_t<decltype(tag)>::type;
    with_eta("sumsq", eta, [&](auto adaptive, double e) {
      constexpr bool AD = std::decay_t<decltype(adaptive)>::value;
      SumSqOp<T, AD> op{};
      op.eta = static_cast<acc_t<T>>(e);
      if constexpr (AD)
        run.template reduce<T>(tables<2>({&grads, weights}), op, out, accumulate);
      else
        run.template reduce<T>(tables<1>({&grads}), op, out, accumulate);
    });
  });
}

// out[0:3] (=, or +=) [||g||^2, ||d||^2, <d, g>], d = points - backups (ASAM: u-space)
template <typename Runner>
void final_sums(Runner& run, const ListView& points, const ListView& backups,
                const ListView& grads, std::optional<double> eta, double* out, bool accumulate) {
  const std::array<const ListView*, 3> lists{&points, &backups, &grads};
  line_up<3>("final_sums", lists, {"points", "backups", "grads"});
  dispatch_dtype(points.layout->dtype(), [&](auto tag) {
    using T = typename std::decay_t<decltype(tag)>::type;
    with_eta("final_sums", eta, [&](auto adaptive, double e) {
      FinalSumsOp<T, std::decay_t<decltype(adaptive)>::value> op{};
      op.eta = static_cast<acc_t<T>>(e);
      run.template reduce<T>(tables<3>(lists), op, out, accumulate);
    });
  });
}

// backups <- params (if backup); params += ascent_scale(sc, hyper) * grads (ASAM: T*T grads)
template <typename Runner>
void backup_ascent(Runner& run, const ListView& params, const ListView& grads,
                   const ListView& backups, const double* sc, const double* hyper, bool backup,
                   std::optional<double> eta) {
  line_up<3>("backup_ascent", {&params, &grads, &backups}, {"params", "grads", "backups"});
  dispatch_dtype(params.layout->dtype(), [&](auto tag) {
    using T = typename std::decay_t<decltype(tag)>::type;
    with_eta("backup_ascent", eta, [&](auto adaptive, double e) {
      with_flag(backup, [&](auto backup_flag) {
        constexpr bool AD = std::decay_t<decltype(adaptive)>::value;
        constexpr bool BACKUP = std::decay_t<decltype(backup_flag)>::value;
        AscentOp<T, BACKUP, AD> op{};
        op.sc = sc;
        op.hyper = hyper;
        op.eta = static_cast<acc_t<T>>(e);
        if constexpr (BACKUP || AD)  // the backups are written, or read for T
          run.template elementwise<T>(tables<3>({&params, &grads, &backups}), op);
        else
          run.template elementwise<T>(tables<2>({&params, &grads}), op);
      });
    });
  });
}

// out = backups + (c_d (points - backups) + c_g grads) (ASAM: c_g T*T grads)
template <typename Runner>
void write_point(Runner& run, const ListView& out, const ListView& points,
                 const ListView& backups, const ListView& grads, const double* coeffs,
                 std::optional<double> eta) {
  const std::array<const ListView*, 4> lists{&out, &points, &backups, &grads};
  line_up<4>("write_point", lists, {"out", "points", "backups", "grads"});
  dispatch_dtype(out.layout->dtype(), [&](auto tag) {
    using T = typename std::decay_t<decltype(tag)>::type;
    with_eta("write_point", eta, [&](auto adaptive, double e) {
      WritePointOp<T, std::decay_t<decltype(adaptive)>::value> op{};
      op.c.coeffs = coeffs;
      op.c.eta = static_cast<acc_t<T>>(e);
      run.template elementwise<T>(tables<4>(lists), op);
    });
  });
}

// grads <- G (the update direction of coeffs); params <- backups
template <typename Runner>
void write_grad_restore(Runner& run, const ListView& params, const ListView& points,
                        const ListView& backups, const ListView& grads, const double* coeffs,
                        std::optional<double> eta) {
  const std::array<const ListView*, 4> lists{&params, &points, &backups, &grads};
  line_up<4>("write_grad_restore", lists, {"params", "points", "backups", "grads"});
  dispatch_dtype(params.layout->dtype(), [&](auto tag) {
    using T = typename std::decay_t<decltype(tag)>::type;
    with_eta("write_grad_restore", eta, [&](auto adaptive, double e) {
      WriteGradRestoreOp<T, std::decay_t<decltype(adaptive)>::value> op{};
      op.c.coeffs = coeffs;
      op.c.eta = static_cast<acc_t<T>>(e);
      run.template elementwise<T>(tables<4>(lists), op);
    });
  });
}

// torch.optim.SGD from theta_0 with G of sc's coefficients; bufs only with momentum
template <typename Runner>
void sgd_update(Runner& run, const ListView& params, const ListView& points,
                const ListView& backups, const ListView& grads, const ListView* bufs,
                const double* sc, const double* hyper, bool weight_decay, bool momentum,
                bool nesterov, bool maximize, bool init_bufs, std::optional<double> eta) {
  if (momentum && bufs == nullptr)
    throw std::invalid_argument("sgd_update with momentum needs the momentum buffers");
  const std::array<const ListView*, 4> lists{&params, &points, &backups, &grads};
  line_up<4>("sgd_update", lists, {"params", "points", "backups", "grads"});
  if (momentum) line_up<2>("sgd_update", {&params, bufs}, {"params", "bufs"});
  dispatch_dtype(params.layout->dtype(), [&](auto tag) {
    using T = typename std::decay_t<decltype(tag)>::type;
    with_eta("sgd_update", eta, [&](auto adaptive, double e) {
      with_flag(momentum, [&](auto momentum_flag) {
        with_flag(init_bufs && momentum, [&](auto init_flag) {
          constexpr bool AD = std::decay_t<decltype(adaptive)>::value;
          constexpr bool MOMENTUM = std::decay_t<decltype(momentum_flag)>::value;
          constexpr bool INIT = std::decay_t<decltype(init_flag)>::value;
          if constexpr (MOMENTUM || !INIT) {
            SgdOp<T, MOMENTUM, INIT, AD> op{};
            op.sc = sc;
            op.hyper = hyper;
            op.c.eta = static_cast<acc_t<T>>(e);
            op.weight_decay = weight_decay;
            op.nesterov = nesterov;
            op.maximize = maximize;
            if constexpr (MOMENTUM)
              run.template elementwise<T>(
                  tables<5>({&params, &points, &backups, &grads, bufs}), op);
            else
              run.template elementwise<T>(tables<4>(lists), op);
          }
        });
      });
    });
  });
}

// torch.optim.Adam / AdamW (amsgrad off) from theta_0; steps: one float32 (or float64,
// steps_double) step count per tensor
template <typename Runner>
void adam_update(Runner& run, const ListView& params, const ListView& points,
                 const ListView& backups, const ListView& grads, const ListView& exp_avgs,
                 const ListView& exp_avg_sqs, const void* steps, bool steps_double,
                 const double* sc, const double* hyper, bool weight_decay, bool decoupled,
                 bool maximize, std::optional<double> eta) {
  const std::array<const ListView*, 6> lists{&params, &points, &backups, &grads, &exp_avgs,
                                             &exp_avg_sqs};
  line_up<6>("adam_update", lists,
             {"params", "points", "backups", "grads", "exp_avgs", "exp_avg_sqs"});
  dispatch_dtype(params.layout->dtype(), [&](auto tag) {
    using T = typename std::decay_t<decltype(tag)>::type;
    with_eta("adam_update", eta, [&](auto adaptive, double e) {
      AdamOp<T, std::decay_t<decltype(adaptive)>::value> op{};
      op.sc = sc;
      op.hyper = hyper;
      op.steps = steps;
      op.steps_double = steps_double;
      op.c.eta = static_cast<acc_t<T>>(e);
      op.weight_decay = weight_decay;
      op.decoupled = decoupled;
      op.maximize = maximize;
      run.template elementwise<T>(tables<6>(lists), op);
    });
  });
}

}  // namespace phases
}  // namespace xsam_cuda
