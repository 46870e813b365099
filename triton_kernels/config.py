"""Launch configuration of the Triton kernels, read once at import.

``TRITON_INTERPRET=1`` (Triton's CPU interpreter) must be set before this
package is imported, as Triton itself reads it when ``@triton.jit`` runs. The
interpreter's cost grows with the number of programs times the number of
operations, so it gets large chunks; GPUs get 4096-element chunks (enough
programs to fill an H100/H200 even for small models) with 8 warps.

Overrides (environment, read at import): ``XSAM_TRITON_BLOCK`` (elements per
program, a power of two), ``XSAM_TRITON_NUM_WARPS``, ``XSAM_TRITON_NO_HINTS=1``
(no 16-byte alignment hints on table pointers).
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
#: give the compiler 16-byte alignment hints for table pointers that are aligned
ALIGN_HINTS = os.environ.get("XSAM_TRITON_NO_HINTS", "0") != "1"

#: torch dtype -> (Triton element dtype, Triton accumulation dtype)
DTYPES = {
    torch.float32: (tl.float32, tl.float32),
    torch.bfloat16: (tl.bfloat16, tl.float32),
    torch.float16: (tl.float16, tl.float32),
    torch.float64: (tl.float64, tl.float64),
}

#: keyword options of every launch. No fp fusion: the kernels round after each
#: operation, like the reference backend (no fma contraction), so results match
#: it; the passes are memory-bound, so this costs nothing measurable.
LAUNCH_OPTIONS = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)


def check_block(block: int) -> int:
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}")
    return block


check_block(DEFAULT_BLOCK)
