// Python bindings of the CPU backend: module xsam_fast._C. PackedList is what
// CpuBackend.pack keeps; the phases take packed lists and the float64 `sc` / `hyper`
// tensors of base.py, positionally (the Python wrapper, xsam_fast/backends/cpu.py, passes
// them through). `eta=None` is plain XSAM; a float is ASAM's offset. LayoutError raised
// here is xsam_fast.backends.packed.LayoutError in Python.
#include <torch/extension.h>

#include "isa.h"
#include "ops.h"
#include "packed_list.h"

namespace py = pybind11;
using xsam_cpu::Eta;
using xsam_cpu::PackedList;

namespace {

PyObject* layout_error_type = nullptr;  // xsam_fast.backends.packed.LayoutError, kept alive

void translate_layout_error(std::exception_ptr error) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const xsam_cpu::LayoutError& e) {
    PyErr_SetString(layout_error_type, e.what());
  }
}

// An optional packed list argument: None or a PackedList. Taken as an object because
// pybind11 defers None for a PackedList* argument to a second, converting pass over every
// argument, which costs more than some whole calls.
PackedList* optional_list(const py::object& list) {
  return list.is_none() ? nullptr : list.cast<PackedList*>();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xsam-fast fused multi-tensor CPU kernels (see xsam_fast/backends/base.py)";
  using namespace pybind11::literals;
  layout_error_type =
      py::object(py::module_::import("xsam_fast.backends.packed").attr("LayoutError"))
          .release()
          .ptr();
  py::register_exception_translator(&translate_layout_error);

  py::class_<PackedList>(m, "PackedList",
                         "A checked list of CPU tensors with its work-item plan (base.py: pack)")
      .def(py::init<std::vector<at::Tensor>, const PackedList*>(), "tensors"_a,
           "like"_a = py::none())
      .def("__len__", &PackedList::size);

  m.def(
      "sumsq",
      [](PackedList& grads, const at::Tensor& out, bool accumulate, const py::object& weights,
         Eta eta) { xsam_cpu::sumsq(grads, out, accumulate, optional_list(weights), eta); },
      "grads"_a, "out"_a, "accumulate"_a, "weights"_a, "eta"_a);
  m.def("final_sums", &xsam_cpu::final_sums, "points"_a, "backups"_a, "grads"_a, "out"_a,
        "accumulate"_a, "eta"_a);
  m.def("ascent_scalars", &xsam_cpu::ascent_scalars, "sc"_a, "first"_a, "check"_a);
  m.def("update_scalars", &xsam_cpu::update_scalars, "sc"_a, "check"_a);
  m.def("plain_scalars", &xsam_cpu::plain_scalars, "sc"_a, "check"_a);
  m.def("backup_ascent", &xsam_cpu::backup_ascent, "params"_a, "grads"_a, "backups"_a, "sc"_a,
        "hyper"_a, "backup"_a, "eta"_a);
  m.def("write_point", &xsam_cpu::write_point, "out"_a, "points"_a, "backups"_a, "grads"_a,
        "coeffs"_a, "eta"_a);
  m.def("write_grad_restore", &xsam_cpu::write_grad_restore, "params"_a, "points"_a,
        "backups"_a, "grads"_a, "coeffs"_a, "eta"_a);
  m.def(
      "sgd_update",
      [](PackedList& params, PackedList& points, PackedList& backups, PackedList& grads,
         const py::object& bufs, const at::Tensor& sc, const at::Tensor& hyper,
         bool weight_decay, bool momentum, bool nesterov, bool maximize, bool init_bufs,
         Eta eta) {
        xsam_cpu::sgd_update(params, points, backups, grads, optional_list(bufs), sc, hyper,
                             weight_decay, momentum, nesterov, maximize, init_bufs, eta);
      },
      "params"_a, "points"_a, "backups"_a, "grads"_a, "bufs"_a, "sc"_a, "hyper"_a,
      "weight_decay"_a, "momentum"_a, "nesterov"_a, "maximize"_a, "init_bufs"_a, "eta"_a);
  m.def("adam_update", &xsam_cpu::adam_update, "params"_a, "points"_a, "backups"_a, "grads"_a,
        "exp_avgs"_a, "exp_avg_sqs"_a, "steps"_a, "sc"_a, "hyper"_a, "weight_decay"_a,
        "decoupled"_a, "maximize"_a, "eta"_a);

  m.def("isa", &xsam_cpu::isa, "instruction set the kernels run with");
  m.def("supported_isas", &xsam_cpu::supported_isas, "instruction sets this CPU runs, best first");
  m.def("set_isa", &xsam_cpu::set_isa, "name"_a,
        "force an instruction set (auto, avx512, avx2, generic); returns the one in use");
}
