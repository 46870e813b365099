// Element types of the CUDA kernels: the accumulation type of each storage type, exact
// widening, round-to-nearest-even narrowing, and the 16-byte vector of a chunk loop.
// Host and device code (the host emulation runs the same conversions).
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace xsam_cuda {

// Accumulation type: float for float/half/bfloat16, double for double.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// Element <-> accumulation type, bit-exact and without type punning through pointers
// (c10's own conversions read the bits through a reinterpret_cast, which strict
// aliasing lets a host compiler break). Narrowing rounds to nearest even, as torch does.
template <typename T>
__host__ __device__ __forceinline__ acc_t<T> widen(T x) {
  return x;
}
template <>
__host__ __device__ __forceinline__ float widen(c10::BFloat16 x) {
  const uint32_t bits = static_cast<uint32_t>(x.x) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}
template <>
__host__ __device__ __forceinline__ float widen(c10::Half x) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(x.x));
#else
  return c10::detail::fp16_ieee_to_fp32_value(x.x);
#endif
}

template <typename T>
__host__ __device__ __forceinline__ T narrow(acc_t<T> v) {
  return v;
}
template <>
__host__ __device__ __forceinline__ c10::BFloat16 narrow(float v) {
#if defined(__CUDA_ARCH__)
  return c10::BFloat16(__bfloat16_as_ushort(__float2bfloat16_rn(v)), c10::BFloat16::from_bits());
#else
  return c10::BFloat16(c10::detail::round_to_nearest_even(v), c10::BFloat16::from_bits());
#endif
}
template <>
__host__ __device__ __forceinline__ c10::Half narrow(float v) {
#if defined(__CUDA_ARCH__)
  return c10::Half(__half_as_ushort(__float2half_rn(v)), c10::Half::from_bits());
#else
  return c10::Half(c10::detail::fp16_ieee_from_fp32_value(v), c10::Half::from_bits());
#endif
}

// 16 bytes of elements: what one vector load or store moves.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kWidth = 16 / sizeof(T);
  T x[kWidth];
};

}  // namespace xsam_cuda
