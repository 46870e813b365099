// Python bindings of the CUDA backend (extension xsam_fast._C_cuda): the packed list class
// and one function per phase of the backend contract, each taking packed lists (no
// per-tensor conversion per call). Called by xsam_fast/backends/cuda.py; semantics in
// xsam_fast/backends/base.py. A LayoutError of the C++ side is raised as
// xsam_fast.backends.packed.LayoutError.
#include <torch/extension.h>

#include "xsam_cuda.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  using namespace xsam_cuda;
  m.doc() = "xsam-fast CUDA kernels: one persistent multi-tensor launch per XSAM phase";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const LayoutError& e) {
      // imported here, when the package is loaded, not when the extension is
      const py::object error = py::module_::import("xsam_fast.backends.packed").attr("LayoutError");
      PyErr_SetString(error.ptr(), e.what());
    }
  });

  py::class_<PackedList, ListPtr>(m, "PackedList",
                                  "CUDA tensors packed for the kernels (device pointer table, "
                                  "work table shared with lists packed like this one)")
      .def(py::init(&PackedList::make), py::arg("tensors"), py::arg("like") = nullptr)
      .def("__len__", &PackedList::size)
      .def_property_readonly("num_items", &PackedList::num_items,
                             "work items (chunks) of the list")
      .def("shares_work_table", &PackedList::shares_work_table, py::arg("other"));

  const auto no_eta = py::arg("eta") = py::none();
  m.def("sumsq", &sumsq, "out[0] (=, or +=) sum of grads^2 (ASAM: of (|weights| + eta) grads)",
        py::arg("grads"), py::arg("out"), py::arg("accumulate"), py::arg("weights") = nullptr,
        no_eta);
  m.def("final_sums", &final_sums, "out[0:3] (=, or +=) [||g||^2, ||d||^2, <d, g>] in one pass",
        py::arg("points"), py::arg("backups"), py::arg("grads"), py::arg("out"),
        py::arg("accumulate"), no_eta);
  m.def("ascent_scalars", &ascent_scalars, "FOUND_INF after an ascent's sumsq (one thread)",
        py::arg("sc"), py::arg("first"), py::arg("check"));
  m.def("update_scalars", &update_scalars, "angle, norms, coefficients, flags (one thread)",
        py::arg("sc"), py::arg("check"));
  m.def("plain_scalars", &plain_scalars, "flags and G = g for a plain step (one thread)",
        py::arg("sc"), py::arg("check"));
  m.def("backup_ascent", &backup_ascent, "backups <- params (if backup); params += scale * grads",
        py::arg("params"), py::arg("grads"), py::arg("backups"), py::arg("sc"),
        py::arg("hyper"), py::arg("backup"), no_eta);
  m.def("write_point", &write_point, "out = backups + (c_d (points - backups) + c_g grads)",
        py::arg("out"), py::arg("points"), py::arg("backups"), py::arg("grads"),
        py::arg("coeffs"), no_eta);
  m.def("write_grad_restore", &write_grad_restore, "grads <- G; params <- backups",
        py::arg("params"), py::arg("points"), py::arg("backups"), py::arg("grads"),
        py::arg("coeffs"), no_eta);
  m.def("sgd_update", &sgd_update, "interpolate and step torch.optim.SGD from theta_0",
        py::arg("params"), py::arg("points"), py::arg("backups"), py::arg("grads"),
        py::arg("bufs"), py::arg("sc"), py::arg("hyper"), py::arg("weight_decay"),
        py::arg("momentum"), py::arg("nesterov"), py::arg("maximize"), py::arg("init_bufs"),
        no_eta);
  m.def("adam_update", &adam_update, "interpolate and step torch.optim.Adam/AdamW from theta_0",
        py::arg("params"), py::arg("points"), py::arg("backups"), py::arg("grads"),
        py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("steps"), py::arg("sc"),
        py::arg("hyper"), py::arg("weight_decay"), py::arg("decoupled"), py::arg("maximize"),
        no_eta);

  m.def("launch_count", &launch_count, "kernel launches issued since the extension was loaded");
  m.def("last_grid", &last_grid, "blocks of the latest multi-tensor launch");
  m.def("sm_count", &sm_count, "multiprocessors of a device", py::arg("device"));
  m.attr("CHUNK") = kChunk;
  m.attr("THREADS") = kThreads;
  m.attr("NSCALARS") = xsam_scalars::kNumScalars;
  m.attr("NHYPER") = xsam_scalars::kNumHyper;
}
