// The element types the CUDA backend is instantiated for, and the one place that maps a
// dtype code to the C++ type of a kernel. Host code; no torch library symbols, so that the
// host emulation (built without libtorch) shares it.
#pragma once

#include <stdexcept>
#include <string>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace xsam_cuda {

// dtype codes (the emulation's ctypes interface uses the same numbers)
enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::kFloat32: return "float32";
    case Dtype::kFloat64: return "float64";
    case Dtype::kFloat16: return "float16";
    case Dtype::kBFloat16: return "bfloat16";
  }
  return "unsupported";
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the element type of `dtype`.
template <typename F>
void dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat32: f(TypeTag<float>{}); return;
    case Dtype::kFloat64: f(TypeTag<double>{}); return;
    case Dtype::kFloat16: f(TypeTag<c10::Half>{}); return;
    case Dtype::kBFloat16: f(TypeTag<c10::BFloat16>{}); return;
  }
  throw std::invalid_argument("xsam_fast cuda backend: unsupported dtype code " +
                              std::to_string(static_cast<int>(dtype)));
}

}  // namespace xsam_cuda
