// The chunk kernels compiled for AVX2 + FMA + F16C, picked at run time when the CPU
// has them (ops.cpp). Elsewhere (non-x86 builds) this table is the generic one.
#include "kernel_table.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#define XSAM_HAS_FMA 1
#define XSAM_ISA avx2
#include "chunk_kernels.h"
#else
namespace xsam_cpu {
namespace avx2 {
const Kernels& kernels(DType dtype) { return generic::kernels(dtype); }
}  // namespace avx2
}  // namespace xsam_cpu
#endif
