#!/usr/bin/env bash
# Compile check of csrc/cuda for both default targets (sm_80 and sm_90), by hand, with
# setup.py's flags (-O3 -fmad=false, no fast math). Reports per source and target the
# kernels, those that spill registers (fails if any), those with a stack frame, and the
# largest register count.
# CI runs the single-target version: tests/test_cuda_compile.py (sm_90 only).
# Objects only: linking needs a CUDA build of torch (setup.py does it there).
# Usage: benchmarks/cuda_compile_check.sh [arch ...]   (default: sm_80 sm_90)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}
[ -x "$NVCC" ] || { echo "nvcc not found" >&2; exit 1; }
ARCHS=("$@"); [ ${#ARCHS[@]} -gt 0 ] || ARCHS=(sm_80 sm_90)
INCLUDES=$(python -c "
import sysconfig
from torch.utils.cpp_extension import include_paths
print(' '.join('-I' + p for p in include_paths() + [sysconfig.get_paths()['include']]))")
FLAGS=(-std=c++20 -O3 -fmad=false -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C_cuda
       -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -D__CUDA_NO_HALF_OPERATORS__
       -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
       -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -Xcompiler -fPIC
       -Xptxas=-v)
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
for arch in "${ARCHS[@]}"; do
  for src in csrc/cuda/*.cu; do
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    "$NVCC" -c "$src" -o "$OUT/$(basename "$src" .cu).$arch.o" -arch="$arch" "${FLAGS[@]}" \
      $INCLUDES 2> "$OUT/ptxas.log" || { cat "$OUT/ptxas.log" >&2; exit 1; }
    kernels=$(grep -c "Compiling entry" "$OUT/ptxas.log" || true)
    spills=$(grep "bytes spill stores" "$OUT/ptxas.log" \
             | grep -vc " 0 bytes spill stores, 0 bytes spill loads" || true)
    stack=$(awk '/bytes stack frame/ && $1 != 0' "$OUT/ptxas.log" | wc -l)
    regs=$(grep -o "Used [0-9]* registers" "$OUT/ptxas.log" | awk '{print $2}' | sort -n \
           | tail -1)
    printf '%-28s %-6s %3d kernels, %d with spills, %d functions with a stack frame, ' \
      "$src" "$arch" "$kernels" "$spills" "$stack"
    printf 'at most %s registers, %.1f s\n' "${regs:-0}" "$(echo "$(date +%s.%N) - $start" | bc)"
    awk '/Function properties for/ { name = $NF }
         /bytes stack frame/ && $1 != 0 { print "    " $1 " B stack frame: " name }' \
      "$OUT/ptxas.log" | c++filt
    [ "$spills" -eq 0 ] || { grep -B1 "bytes spill" "$OUT/ptxas.log" >&2; exit 1; }
  done
done
for src in csrc/cuda/*.cpp; do
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  "${CXX:-c++}" -c "$src" -o "$OUT/$(basename "$src" .cpp).o" -std=c++20 -O0 -g0 -fPIC \
    -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C_cuda $INCLUDES
  printf '%-28s %-6s %.1f s\n' "$src" "host" "$(echo "$(date +%s.%N) - $start" | bc)"
done
echo "OK: csrc/cuda compiles for ${ARCHS[*]}"
