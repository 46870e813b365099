"""The fused multi-tensor CPU backend: the C++ extension ``xsam_fast._C``.

:meth:`CpuBackend.pack` hands the tensors to C++ once: a ``_C.PackedList`` checks them
(CPU, one dtype, dense and non-overlapping; with ``like``, the same shapes and strides)
and plans the work items, fixed-size ranges of elements in memory order. Each phase is
then one call for the whole bucket: the extension runs the items on ATen's thread pool
with kernels vectorised for AVX-512 or AVX2 (picked at run time from the CPU's features,
generic x86-64 code otherwise) and adds reduction partials in a fixed order, so sums do
not depend on the number of threads. The device scalars ``sc`` and ``hyper`` are CPU
memory here, read and written by the host in float64. This module passes the packed
lists and a few scalars through; no phase call does Python work per tensor. Source: ``csrc/cpu/``.
"""

from __future__ import annotations

import torch

from .extension import ExtensionBackend, import_error_text

try:
    from .. import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except Exception as exc:  # not built (no compiler, build isolation) or built for another torch
    _C = None
    _IMPORT_ERROR = import_error_text(exc)

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class CpuBackend(ExtensionBackend):
    name = "cpu"
    follows_storage = True  # the C++ lists re-read (and re-check) moved tensors

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if _C is None:
            return False, (
                f"the C++ extension xsam_fast._C is not importable ({_IMPORT_ERROR}); "
                "reinstall with `pip install --no-build-isolation .` and a C++ compiler"
            )
        return True, ""

    @staticmethod
    def isa() -> str:
        """Instruction set the kernels run with here (``"avx512"``, ``"avx2"`` or ``"generic"``)."""
        return _C.isa()

    @staticmethod
    def supported_isas() -> list[str]:
        """Instruction sets this CPU can run, best first (the best is used by default)."""
        return list(_C.supported_isas())

    @staticmethod
    def set_isa(name: str) -> str:
        """Force ``"avx512"``, ``"avx2"``, ``"generic"`` or ``"auto"`` (process-wide, for
        tests and benchmarks); returns the instruction set now in use."""
        return _C.set_isa(name)

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return torch.device(device).type == "cpu" and dtype in _DTYPES

    @classmethod
    def extension(cls):
        return _C
