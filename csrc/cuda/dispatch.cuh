// The one place that maps a tensor dtype to the C++ element type of a kernel.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace xsam_cuda {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the element type of `dtype`; float32, float64,
// float16 and bfloat16 are supported, anything else raises.
template <typename F>
void dispatch_floating(c10::ScalarType dtype, const char* phase, F&& f) {
  switch (dtype) {
    case c10::ScalarType::Float:
      f(TypeTag<float>{});
      break;
    case c10::ScalarType::Double:
      f(TypeTag<double>{});
      break;
    case c10::ScalarType::Half:
      f(TypeTag<c10::Half>{});
      break;
    case c10::ScalarType::BFloat16:
      f(TypeTag<c10::BFloat16>{});
      break;
    default:
      TORCH_CHECK(false, "xsam_fast cuda backend, ", phase, ": unsupported dtype ", dtype,
                  " (float32, float64, float16 and bfloat16 are)");
  }
}

}  // namespace xsam_cuda
