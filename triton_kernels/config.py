"""Launch configuration of the Triton kernels, read once at import.

``TRITON_INTERPRET=1`` (Triton's CPU interpreter) must be set before this
package is imported, as Triton itself reads it when ``@triton.jit`` runs. The
interpreter's cost grows with the number of programs times the number of
operations, so it gets large chunks; GPUs get 4096-element chunks (enough
programs to fill an H100/H200 even for small models) with 8 warps.

Overrides (environment, read at import): ``XSAM_TRITON_BLOCK`` (elements per
program, a power of two), ``XSAM_TRITON_NUM_WARPS``.
"""

from __future__ import annotations

import os

import torch
import triton.language as tl

#: running under Triton's interpreter (CPU tensors, numpy semantics)
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: elements per program (one chunk of one tensor)
DEFAULT_BLOCK = int(os.environ.get("XSAM_TRITON_BLOCK", 65536 if INTERPRET else 4096))
#: warps per program on a GPU
NUM_WARPS = int(os.environ.get("XSAM_TRITON_NUM_WARPS", 8))
#: elements per iteration of the second stage of the reductions
REDUCE_BLOCK = 1024
#: bytes of the widest vector load; a tensor whose address is a multiple of it takes the
#: kernels' hinted (vectorised) path
VECTOR_BYTES = 16

#: torch dtype -> (Triton element dtype, Triton accumulation dtype)
DTYPES = {
    torch.float32: (tl.float32, tl.float32),
    torch.bfloat16: (tl.bfloat16, tl.float32),
    torch.float16: (tl.float16, tl.float32),
    torch.float64: (tl.float64, tl.float64),
}

#: keyword options of every multi-tensor launch. No fp fusion: the kernels round after
#: each operation, like the reference backend (no fma contraction), so results match
#: it; the passes are memory-bound, so this costs nothing measurable.
LAUNCH_OPTIONS = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)
#: options of the single-program scalar kernels (float64 scalar math, one warp)
SCALAR_OPTIONS = dict(num_warps=1, enable_fp_fusion=False)


def check_block(block: int) -> int:
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    return block


check_block(DEFAULT_BLOCK)
