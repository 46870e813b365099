// Python bindings of the CPU backend: module xsam_fast._C, one function per phase.
// `eta=None` is plain XSAM; a float is ASAM's offset (base.py).
#include <torch/extension.h>

#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xsam-fast fused multi-tensor CPU kernels (see xsam_fast/backends/base.py)";
  using namespace pybind11::literals;
  const auto none = pybind11::none();
  m.def("sumsq", &xsam_cpu::sumsq, "grads"_a, pybind11::kw_only(), "weights"_a = none,
        "eta"_a = none);
  m.def("backup_ascent", &xsam_cpu::backup_ascent, "params"_a, "grads"_a, "backups"_a, "scale"_a,
        "backup"_a, pybind11::kw_only(), "eta"_a = none);
  m.def("final_sums", &xsam_cpu::final_sums, "points"_a, "backups"_a, "grads"_a,
        pybind11::kw_only(), "eta"_a = none);
  m.def("write_point", &xsam_cpu::write_point, "out"_a, "points"_a, "backups"_a, "grads"_a,
        "coeffs"_a, pybind11::kw_only(), "eta"_a = none);
  m.def("write_grad_restore", &xsam_cpu::write_grad_restore, "params"_a, "points"_a,
        "backups"_a, "grads"_a, "coeffs"_a, pybind11::kw_only(), "eta"_a = none);
  m.def("sgd_update", &xsam_cpu::sgd_update, "params"_a, "points"_a, "backups"_a, "grads"_a,
        "bufs"_a, "coeffs"_a, pybind11::kw_only(), "lr"_a, "weight_decay"_a, "momentum"_a,
        "dampening"_a, "nesterov"_a, "maximize"_a, "init_bufs"_a, "eta"_a = none);
  m.def("adam_update", &xsam_cpu::adam_update, "params"_a, "points"_a, "backups"_a, "grads"_a,
        "exp_avgs"_a, "exp_avg_sqs"_a, "coeffs"_a, pybind11::kw_only(), "lr"_a, "beta1"_a,
        "beta2"_a, "eps"_a, "weight_decay"_a, "decoupled"_a, "maximize"_a, "step_size"_a,
        "bias_correction2_sqrt"_a, "eta"_a = none);
  m.def("isa", &xsam_cpu::isa, "instruction set the kernels run with");
  m.def("supported_isas", &xsam_cpu::supported_isas, "instruction sets this CPU runs, best first");
  m.def("set_isa", &xsam_cpu::set_isa, "name"_a,
        "force an instruction set (auto, avx512, avx2, generic); returns the one in use");
}
