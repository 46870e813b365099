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

from typing import Sequence

import torch
from torch import Tensor

from .base import Backend, LayoutError, TensorList

try:
    from .. import _C_cuda  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except Exception as exc:  # not built here, or built against another torch
    _C_cuda = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

#: dtypes the kernels are instantiated for
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class CudaTensorList(TensorList):
    """A list packed by :class:`CudaBackend`: the tensors and their ``_C_cuda.PackedList``."""

    __slots__ = ("packed",)

    def __init__(self, tensors: Sequence[Tensor], packed) -> None:
        super().__init__(tensors)
        self.packed = packed


def _packed(lst: TensorList):
    """The C++ side of a list packed by this backend (LayoutError for any other list)."""
    if not isinstance(lst, CudaTensorList):
        raise LayoutError(
            f"a {type(lst).__name__} was not packed by the cuda backend "
            "(pack it with CudaBackend.pack)"
        )
    return lst.packed


class CudaBackend(Backend):
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

    # ------------------------------------------------------------------ lists
    def pack(
        self, tensors: Sequence[Tensor], like: TensorList | None = None, *, grads: bool = False
    ) -> CudaTensorList:
        """Checked in C++ (a few nanoseconds per tensor), so ``grads`` changes nothing."""
        tensors = tuple(tensors)
        return CudaTensorList(
            tensors, _C_cuda.PackedList(list(tensors), None if like is None else _packed(like))
        )

    # ------------------------------------------------------------------ reductions
    def sumsq(self, grads, out, *, accumulate, weights=None, eta=None):
        _C_cuda.sumsq(
            _packed(grads), out, accumulate, None if weights is None else _packed(weights), eta
        )

    def final_sums(self, points, backups, grads, out, *, accumulate, eta=None):
        _C_cuda.final_sums(_packed(points), _packed(backups), _packed(grads), out, accumulate, eta)

    # ------------------------------------------------------------------ scalars
    def ascent_scalars(self, sc, *, first, check):
        _C_cuda.ascent_scalars(sc, first, check)

    def update_scalars(self, sc, *, check):
        _C_cuda.update_scalars(sc, check)

    def plain_scalars(self, sc, *, check):
        _C_cuda.plain_scalars(sc, check)

    # ------------------------------------------------------------------ elementwise
    def backup_ascent(self, params, grads, backups, sc, hyper, *, backup, eta=None):
        _C_cuda.backup_ascent(
            _packed(params), _packed(grads), _packed(backups), sc, hyper, backup, eta
        )

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        _C_cuda.write_point(
            _packed(out), _packed(points), _packed(backups), _packed(grads), coeffs, eta
        )

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        _C_cuda.write_grad_restore(
            _packed(params), _packed(points), _packed(backups), _packed(grads), coeffs, eta
        )

    def sgd_update(
        self,
        params,
        points,
        backups,
        grads,
        bufs,
        sc,
        hyper,
        *,
        weight_decay,
        momentum,
        nesterov,
        maximize,
        init_bufs,
        eta=None,
    ):
        _C_cuda.sgd_update(
            _packed(params),
            _packed(points),
            _packed(backups),
            _packed(grads),
            None if bufs is None else _packed(bufs),
            sc,
            hyper,
            weight_decay,
            momentum,
            nesterov,
            maximize,
            init_bufs,
            eta,
        )

    def adam_update(
        self,
        params,
        points,
        backups,
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        sc,
        hyper,
        *,
        weight_decay,
        decoupled,
        maximize,
        eta=None,
    ):
        _C_cuda.adam_update(
            _packed(params),
            _packed(points),
            _packed(backups),
            _packed(grads),
            _packed(exp_avgs),
            _packed(exp_avg_sqs),
            steps,
            sc,
            hyper,
            weight_decay,
            decoupled,
            maximize,
            eta,
        )

    # ------------------------------------------------------------------ for tests
    @staticmethod
    def launch_count() -> int:
        """Kernel launches issued by the extension since it was loaded."""
        return int(_C_cuda.launch_count())

    @staticmethod
    def last_grid() -> int:
        """Blocks of the latest multi-tensor launch."""
        return int(_C_cuda.last_grid())
