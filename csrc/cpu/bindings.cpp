// Python bindings of the CPU backend: module xsam_fast._C, one function per phase.
#include <torch/extension.h>

#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xsam-fast fused multi-tensor CPU kernels (see xsam_fast/backends/base.py)";
  using namespace pybind11::literals;
  m.def("sumsq", &xsam_cpu::sumsq, "grads"_a);
  m.def("backup_ascent", &xsam_cpu::backup_ascent, "params"_a, "grads"_a, "backups"_a, "scale"_a,
        "backup"_a);
  m.def("final_sums", &xsam_cpu::final_sums, "points"_a, "backups"_a, "grads"_a);
  m.def("write_point", &xsam_cpu::write_point, "out"_a, "points"_a, "backups"_a, "grads"_a,
        "coeffs"_a);
  m.def("write_grad_restore", &xsam_cpu::write_grad_restore, "params"_a, "points"_a,
        "backups"_a, "grads"_a, "coeffs"_a);
  m.def("sgd_update", &xsam_cpu::sgd_update, "params"_a, "points"_a, "backups"_a, "grads"_a,
        "bufs"_a, "coeffs"_a, "lr"_a, "weight_decay"_a, "momentum"_a, "dampening"_a,
        "nesterov"_a, "maximize"_a, "init_bufs"_a);
  m.def("adam_update", &xsam_cpu::adam_update, "params"_a, "points"_a, "backups"_a, "grads"_a,
        "exp_avgs"_a, "exp_avg_sqs"_a, "coeffs"_a, "lr"_a, "beta1"_a, "beta2"_a, "eps"_a,
        "weight_decay"_a, "decoupled"_a, "maximize"_a, "step_size"_a,
        "bias_correction2_sqrt"_a);
  m.def("isa", &xsam_cpu::isa, "instruction set the kernels run with");
}
