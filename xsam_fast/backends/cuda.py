"""The CUDA backend: multi-tensor kernels of the extension ``xsam_fast._C_cuda``.

Each phase is one call into the extension with whole tensor lists; the kernels
(``csrc/cuda/``) process every tensor of a bucket in one launch (more only when
the kernel's argument table of tensors fills up), read the scalars ``scale`` and
``coeffs`` from device memory, and reduce deterministically (per-block partials
summed in a fixed order). Nothing here queries the GPU at import time.

The extension is built by ``setup.py`` where a CUDA build of torch and a CUDA
toolkit (``CUDA_HOME``, or ``nvcc`` on ``PATH``) are present, GPU or not.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Backend, Tensors

try:
    from .. import _C_cuda  # type: ignore[attr-defined]

    _IMPORT_ERROR = ""
except Exception as exc:  # not built here, or built against another torch
    _C_cuda = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

#: dtypes the kernels are instantiated for
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class CudaBackend(Backend):
    """Fused XSAM phases as CUDA multi-tensor kernels."""

    name = "cuda"

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if _C_cuda is None:
            return False, (
                "the CUDA extension xsam_fast._C_cuda is not importable "
                f"({_IMPORT_ERROR}); it is built by `pip install --no-build-isolation .` "
                "with a CUDA build of torch and a CUDA toolkit (CUDA_HOME, or nvcc on PATH)")
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible (torch.cuda.is_available() is False)"
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return torch.device(device).type == "cuda" and dtype in SUPPORTED_DTYPES

    @staticmethod
    def launch_count() -> int:
        """Kernel launches issued by the extension since it was loaded (for tests)."""
        return int(_C_cuda.launch_count())

    def sumsq(self, tensors: Tensors, *, weights=None, eta=None) -> Tensor:
        if not tensors:
            return torch.zeros((), dtype=torch.float32)
        if eta is not None and weights is None:
            raise ValueError("sumsq with eta needs the weights (theta_0) that T is made of")
        return _C_cuda.sumsq(list(tensors), list(weights) if eta is not None else [], _eta(eta))

    def backup_ascent(self, params, grads, backups, scale, backup, *, eta=None):
        if params:
            keep = backup or eta is not None  # written, or read for T
            _C_cuda.backup_ascent(list(params), list(grads), list(backups) if keep else [],
                                  scale, bool(backup), _eta(eta))

    def final_sums(self, points, backups, grads, *, eta=None):
        if not points:
            return torch.zeros(3, dtype=torch.float32)
        return _C_cuda.final_sums(list(points), list(backups), list(grads), _eta(eta))

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        if out:
            _C_cuda.write_point(list(out), list(points), list(backups), list(grads), coeffs,
                                _eta(eta))

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        if params:
            _C_cuda.write_grad_restore(list(params), list(points), list(backups), list(grads),
                                       coeffs, _eta(eta))

    def sgd_update(self, params, points, backups, grads, bufs, coeffs, *, lr, weight_decay,
                   momentum, dampening, nesterov, maximize, init_bufs, eta=None):
        if params:
            _C_cuda.sgd_update(list(params), list(points), list(backups), list(grads),
                               list(bufs), coeffs, float(lr), float(weight_decay),
                               float(momentum), float(dampening), bool(nesterov),
                               bool(maximize), bool(init_bufs), _eta(eta))

    def adam_update(self, params, points, backups, grads, exp_avgs, exp_avg_sqs, coeffs, *, lr,
                    beta1, beta2, eps, weight_decay, decoupled, maximize, step_size,
                    bias_correction2_sqrt, eta=None):
        if params:
            _C_cuda.adam_update(list(params), list(points), list(backups), list(grads),
                                list(exp_avgs), list(exp_avg_sqs), coeffs, float(lr),
                                float(beta1), float(beta2), float(eps), float(weight_decay),
                                bool(decoupled), bool(maximize), float(step_size),
                                float(bias_correction2_sqrt), _eta(eta))


def _eta(eta: float | None) -> float | None:
    return None if eta is None else float(eta)
