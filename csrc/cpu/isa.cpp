// Run-time choice of the instruction set (CPU features via the compiler's cpu_supports).
#include "isa.h"

#include <atomic>

#include <c10/util/Exception.h>

namespace xsam_cpu {
namespace {

enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512"};

bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  switch (isa) {
    case kGeneric: return true;
    case kAvx2: return avx2;
    case kAvx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return isa == kGeneric;
#endif
}

Isa best_isa() {
  for (Isa isa : {kAvx512, kAvx2})
    if (cpu_has(isa)) return isa;
  return kGeneric;
}

std::atomic<int>& current_isa() {
  static std::atomic<int> isa{best_isa()};
  return isa;
}

DType dtype_of(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::Float;
    case at::kDouble: return DType::Double;
    case at::kBFloat16: return DType::BFloat16;
    case at::kHalf: return DType::Half;
    default: TORCH_CHECK(false, "xsam_fast cpu backend: unsupported dtype ", st);
  }
}

}  // namespace

const Kernels& kernels_for(at::ScalarType st) {
  const DType dt = dtype_of(st);
  switch (current_isa().load(std::memory_order_relaxed)) {
    case kAvx512: return avx512::kernels(dt);
    case kAvx2: return avx2::kernels(dt);
    default: return generic::kernels(dt);
  }
}

std::string isa() { return kIsaNames[current_isa().load()]; }

std::vector<std::string> supported_isas() {
  std::vector<std::string> names;
  for (Isa isa : {kAvx512, kAvx2, kGeneric})
    if (cpu_has(isa)) names.push_back(kIsaNames[isa]);
  return names;
}

std::string set_isa(const std::string& name) {
  Isa isa = best_isa();
  if (name != "auto") {
    bool found = false;
    for (Isa i : {kGeneric, kAvx2, kAvx512}) {
      if (name == kIsaNames[i]) {
        isa = i;
        found = true;
      }
    }
    TORCH_CHECK_VALUE(found, "unknown instruction set ", name,
                      "; use auto, avx512, avx2 or generic");
    TORCH_CHECK_VALUE(cpu_has(isa), "this CPU cannot run the ", name, " kernels");
  }
  current_isa().store(isa);
  return kIsaNames[isa];
}

}  // namespace xsam_cpu
