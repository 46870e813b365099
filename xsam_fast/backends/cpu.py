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

from typing import Sequence

import torch
from torch import Tensor

from .base import Backend, TensorList

try:
    from .. import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except Exception as exc:  # not built (no compiler, build isolation) or built for another torch
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class CpuTensorList(TensorList):
    """A packed list of the cpu backend: the tensors and their ``_C.PackedList``."""

    __slots__ = ("packed",)

    def __init__(self, tensors: Sequence[Tensor], packed) -> None:
        super().__init__(tensors)
        self.packed = packed


class CpuBackend(Backend):
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

    # ------------------------------------------------------------------ lists
    def pack(
        self, tensors: Sequence[Tensor], like: TensorList | None = None, *, grads: bool = False
    ) -> CpuTensorList:
        """Raises :class:`~xsam_fast.backends.base.LayoutError` for tensors this backend
        cannot step together (see the module docstring). The checks are made in C++ at a
        few nanoseconds per tensor, so ``grads`` changes nothing."""
        if like is not None and not isinstance(like, CpuTensorList):
            like = self.pack(like.tensors)  # packed by another backend: checked here too
        tensors = tuple(tensors)
        return CpuTensorList(tensors, _C.PackedList(tensors, None if like is None else like.packed))

    # ------------------------------------------------------------------ reductions
    def sumsq(self, grads, out, *, accumulate, weights=None, eta=None):
        _C.sumsq(grads.packed, out, accumulate, None if weights is None else weights.packed, eta)

    def final_sums(self, points, backups, grads, out, *, accumulate, eta=None):
        _C.final_sums(points.packed, backups.packed, grads.packed, out, accumulate, eta)

    # ------------------------------------------------------------------ scalars
    def ascent_scalars(self, sc, *, first, check):
        _C.ascent_scalars(sc, first, check)

    def update_scalars(self, sc, *, check):
        _C.update_scalars(sc, check)

    def plain_scalars(self, sc, *, check):
        _C.plain_scalars(sc, check)

    # ------------------------------------------------------------------ elementwise
    def backup_ascent(self, params, grads, backups, sc, hyper, *, backup, eta=None):
        _C.backup_ascent(params.packed, grads.packed, backups.packed, sc, hyper, backup, eta)

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        _C.write_point(out.packed, points.packed, backups.packed, grads.packed, coeffs, eta)

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        _C.write_grad_restore(
            params.packed, points.packed, backups.packed, grads.packed, coeffs, eta
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
        _C.sgd_update(
            params.packed,
            points.packed,
            backups.packed,
            grads.packed,
            None if bufs is None else bufs.packed,
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
        _C.adam_update(
            params.packed,
            points.packed,
            backups.packed,
            grads.packed,
            exp_avgs.packed,
            exp_avg_sqs.packed,
            steps,
            sc,
            hyper,
            weight_decay,
            decoupled,
            maximize,
            eta,
        )
