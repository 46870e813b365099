// Python bindings of the CUDA backend (extension xsam_fast._C_cuda): one
// function per phase, each taking whole tensor lists (no per-tensor Python).
// Called by xsam_fast/backends/cuda.py; semantics in xsam_fast/backends/base.py.
#include <torch/extension.h>

#include "xsam_cuda.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using namespace xsam_cuda;
  m.doc() = "xsam-fast CUDA kernels (multi-tensor apply), one call per XSAM phase";
  m.def("sumsq", &sumsq, "sum of squares of every tensor (0-d, accumulation dtype); with eta "
        "of (|weights| + eta) * tensors", py::arg("tensors"), py::arg("weights"),
        py::arg("eta") = py::none());
  m.def("backup_ascent", &backup_ascent, "backups <- params (if backup); params += scale * grads",
        py::arg("params"), py::arg("grads"), py::arg("backups"), py::arg("scale"),
        py::arg("backup"), py::arg("eta") = py::none());
  m.def("final_sums", &final_sums, "[||g||^2, ||d||^2, <d, g>] in one pass, d = points - backups",
        py::arg("points"), py::arg("backups"), py::arg("grads"), py::arg("eta") = py::none());
  m.def("write_point", &write_point, "out = backups + c_d (points - backups) + c_g grads",
        py::arg("out"), py::arg("points"), py::arg("backups"), py::arg("grads"),
        py::arg("coeffs"), py::arg("eta") = py::none());
  m.def("write_grad_restore", &write_grad_restore,
        "grads <- c_d (points - backups) + c_g grads; params <- backups", py::arg("params"),
        py::arg("points"), py::arg("backups"), py::arg("grads"), py::arg("coeffs"),
        py::arg("eta") = py::none());
  m.def("sgd_update", &sgd_update, "interpolate and step torch.optim.SGD from theta_0",
        py::arg("params"), py::arg("points"), py::arg("backups"), py::arg("grads"),
        py::arg("bufs"), py::arg("coeffs"), py::arg("lr"), py::arg("weight_decay"),
        py::arg("momentum"), py::arg("dampening"), py::arg("nesterov"), py::arg("maximize"),
        py::arg("init_bufs"), py::arg("eta") = py::none());
  m.def("adam_update", &adam_update, "interpolate and step torch.optim.Adam/AdamW from theta_0",
        py::arg("params"), py::arg("points"), py::arg("backups"), py::arg("grads"),
        py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("coeffs"), py::arg("lr"),
        py::arg("beta1"), py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"),
        py::arg("decoupled"), py::arg("maximize"), py::arg("step_size"),
        py::arg("bias_correction2_sqrt"), py::arg("eta") = py::none());
  m.def("launch_count", &launch_count, "kernel launches issued since the extension was loaded");
}
