"""The fused multi-tensor CPU backend: the C++ extension ``xsam_fast._C``.

Each phase is one call for the whole bucket; inside, the extension splits the
tensors into fixed work items, runs them on ATen's thread pool with kernels
vectorised for AVX-512 or AVX2 (picked at run time from the CPU's features,
generic x86-64 code otherwise) and adds reduction partials in a fixed order,
so sums do not depend on the number of threads. This module only passes the
arguments through. Source: ``csrc/cpu/``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Backend, Tensors

try:
    from .. import _C  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except Exception as exc:  # not built (no compiler, build isolation) or built for another torch
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class CpuBackend(Backend):
    name = "cpu"

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if _C is None:
            return False, (f"the C++ extension xsam_fast._C is not importable ({_IMPORT_ERROR}); "
                           "reinstall with `pip install --no-build-isolation .` and a C++ compiler")
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

    def sumsq(self, tensors: Tensors, *, weights=None, eta=None) -> Tensor:
        return _C.sumsq(list(tensors), weights=None if weights is None else list(weights),
                        eta=eta)

    def backup_ascent(self, params, grads, backups, scale, backup, *, eta=None):
        _C.backup_ascent(list(params), list(grads), list(backups), scale, backup, eta=eta)

    def final_sums(self, points, backups, grads, *, eta=None):
        return _C.final_sums(list(points), list(backups), list(grads), eta=eta)

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        _C.write_point(list(out), list(points), list(backups), list(grads), coeffs, eta=eta)

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        _C.write_grad_restore(list(params), list(points), list(backups), list(grads), coeffs,
                              eta=eta)

    def sgd_update(self, params, points, backups, grads, bufs, coeffs, *, lr, weight_decay,
                   momentum, dampening, nesterov, maximize, init_bufs, eta=None):
        _C.sgd_update(list(params), list(points), list(backups), list(grads), list(bufs), coeffs,
                      lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening,
                      nesterov=nesterov, maximize=maximize, init_bufs=init_bufs, eta=eta)

    def adam_update(self, params, points, backups, grads, exp_avgs, exp_avg_sqs, coeffs, *, lr,
                    beta1, beta2, eps, weight_decay, decoupled, maximize, step_size,
                    bias_correction2_sqrt, eta=None):
        _C.adam_update(list(params), list(points), list(backups), list(grads), list(exp_avgs),
                       list(exp_avg_sqs), coeffs, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, decoupled=decoupled, maximize=maximize,
                       step_size=step_size, bias_correction2_sqrt=bias_correction2_sqrt,
                       eta=eta)
