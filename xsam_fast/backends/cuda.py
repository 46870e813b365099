"""The CUDA backend: persistent multi-tensor kernels of the extension ``xsam_fast._C_cuda``.

:meth:`CudaBackend.pack` checks a list once and builds, on its device, a table of
the tensors' addresses and (once per layout, shared by the lists packed ``like``
it) a table of (tensor, chunk) work items, both copied from pinned memory without
synchronising. Every phase is then one call into the extension and one kernel
launch (plus one cleanup launch for a reduction) whatever the number of tensors,
on the tensors' device and its current stream. The kernels read the device
scalars ``sc``, the bucket's ``hyper`` and Adam's ``steps`` from device memory,
so nothing synchronises with the host and a step can be captured in a CUDA graph.
Reductions are deterministic (one partial per work item, added in a fixed order).
Source: ``csrc/cuda/``; semantics: :mod:`xsam_fast.backends.base`.

The extension is built by ``setup.py`` where a CUDA build of torch and a CUDA
toolkit (``CUDA_HOME``, or ``nvcc`` on ``PATH``) are present, GPU or not.
Nothing here queries the GPU at import time.
"""

from __future__ import annotations

import torch

from .extension import ExtensionBackend, import_error_text

try:
    from .. import _C_cuda  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except Exception as exc:  # not built here, or built against another torch
    _C_cuda = None
    _IMPORT_ERROR = import_error_text(exc)

#: dtypes the kernels are instantiated for
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class CudaBackend(ExtensionBackend):
    """Fused XSAM phases as persistent CUDA multi-tensor kernels."""

    name = "cuda"

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if _C_cuda is None:
            return False, (
                "the CUDA extension xsam_fast._C_cuda is not importable "
                f"({_IMPORT_ERROR}); it is built by `pip install --no-build-isolation .` "
                "with a CUDA build of torch and a CUDA toolkit (CUDA_HOME, or nvcc on PATH)"
            )
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible (torch.cuda.is_available() is False)"
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return torch.device(device).type == "cuda" and dtype in SUPPORTED_DTYPES

    @classmethod
    def extension(cls):
        return _C_cuda

    # ------------------------------------------------------------------ for tests
    @staticmethod
    def launch_count() -> int:
        """Kernel launches issued by the extension since it was loaded."""
        return int(_C_cuda.launch_count())

    @staticmethod
    def last_grid() -> int:
        """Blocks of the latest multi-tensor launch."""
        return int(_C_cuda.last_grid())
