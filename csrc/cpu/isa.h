// The instruction set the chunk kernels run with: the best this CPU has by default
// (AVX-512, AVX2, or generic x86-64 code), or one forced for tests and benchmarks.
#pragma once

#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "kernel_table.h"

namespace xsam_cpu {

// The kernels of the current instruction set for tensors of `st` (float32, float64,
// bfloat16 or float16; packing refuses the others).
const Kernels& kernels_for(at::ScalarType st);

// Instruction set the kernels run with: "avx512", "avx2" or "generic".
std::string isa();
// Instruction sets this CPU can run, best first.
std::vector<std::string> supported_isas();
// Forces an instruction set ("auto": the best this CPU has); returns the one in use.
std::string set_isa(const std::string& name);

}  // namespace xsam_cpu
