// The chunk kernels compiled for AVX-512 (F, BW, VL, DQ) + FMA + F16C, picked at run
// time when the CPU has them (ops.cpp). Elsewhere (non-x86 builds) this table is the
// generic one.
#include "kernel_table.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#define XSAM_HAS_FMA 1
#define XSAM_ISA avx512
#include "chunk_kernels.h"
#else
namespace xsam_cpu {
namespace avx512 {
const Kernels& kernels(DType dtype) { return generic::kernels(dtype); }
}  // namespace avx512
}  // namespace xsam_cpu
#endif
