"""The Triton backend: every phase is one multi-tensor launch (reductions: two).

The kernels live in ``xsam_fast.triton_kernels``. Each launch covers all the
tensors of a bucket through pointer tables and a work list of chunks, cached
on the host side (see ``triton_kernels/tables.py``), so the number of launches
per phase does not grow with the number of tensors and a step in which nothing
was reallocated builds nothing. Scalars (``scale``, ``coeffs``, and the
hyper-parameters) are read from device memory: a step without search never
synchronises with the host. Reductions are two-stage and deterministic.

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before ``xsam_fast.triton_kernels`` is imported),
which is how it is tested on machines without a GPU. Nothing here queries the
GPU at import time.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..coefficients import accumulation_dtype
from .base import Backend, Tensors

try:
    import triton  # noqa: F401

    from ..triton_kernels import config, perturb, reductions, update
    from ..triton_kernels.tables import Tables

    _IMPORT_ERROR = ""
except Exception as exc:  # no Triton, or a Triton this code does not run on
    config = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

def _interpreting() -> bool:
    """Whether the kernels were compiled for Triton's CPU interpreter."""
    return config is not None and config.INTERPRET

class TritonBackend(Backend):
    """Fused XSAM phases as multi-tensor Triton kernels.

    Args:
        block: elements per program (a power of two); default 4096 on GPUs,
            65536 under the interpreter (``XSAM_TRITON_BLOCK`` overrides).
    """

    name = "triton"

    def __init__(self, block: int | None = None) -> None:
        if config is None:
            raise RuntimeError(f"Triton is not importable: {_IMPORT_ERROR}")
        self.tables = Tables(block or config.DEFAULT_BLOCK)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if config is None:
            return False, f"triton is not importable ({_IMPORT_ERROR})"
        if _interpreting():
            return True, ""
        if not torch.cuda.is_available():
            return False, ("no CUDA device is visible and TRITON_INTERPRET is not 1 (set it "
                           "before importing xsam_fast to run the kernels on the CPU, slowly)")
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        if config is None or dtype not in config.DTYPES:
            return False
        kind = torch.device(device).type
        return kind == "cpu" if _interpreting() else kind == "cuda"

    # ------------------------------------------------------------ reductions
    def sumsq(self, tensors: Tensors, *, weights=None, eta=None) -> Tensor:
        if not tensors:
            return torch.zeros((), dtype=torch.float32)
        if eta is not None and weights is None:
            raise ValueError("sumsq with eta needs the weights (theta_0) that T is made of")
        return reductions.sumsq(self.tables, tensors, accumulation_dtype(tensors[0].dtype),
                                weights, eta)

    def final_sums(self, points: Tensors, backups: Tensors, grads: Tensors, *,
                   eta=None) -> Tensor:
        if not points:
            return torch.zeros(3, dtype=torch.float32)
        return reductions.final_sums(self.tables, points, backups, grads,
                                     accumulation_dtype(points[0].dtype), eta)

    # ------------------------------------------------------------ elementwise
    def backup_ascent(self, params, grads, backups, scale, backup, *, eta=None):
        if params:
            perturb.backup_ascent(self.tables, params, grads, backups, scale, backup, eta)

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        if out:
            perturb.write_point(self.tables, out, points, backups, grads, coeffs, eta)

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        if params:
            perturb.write_grad_restore(self.tables, params, points, backups, grads, coeffs, eta)

    def sgd_update(self, params, points, backups, grads, bufs, coeffs, *, lr, weight_decay,
                   momentum, dampening, nesterov, maximize, init_bufs, eta=None):
        if params:
            update.sgd_update(self.tables, params, points, backups, grads, bufs, coeffs, lr=lr,
                              weight_decay=weight_decay, momentum=momentum,
                              dampening=dampening, nesterov=nesterov, maximize=maximize,
                              init_bufs=init_bufs, eta=eta)

    def adam_update(self, params, points, backups, grads, exp_avgs, exp_avg_sqs, coeffs, *, lr,
                    beta1, beta2, eps, weight_decay, decoupled, maximize, step_size,
                    bias_correction2_sqrt, eta=None):
        if params:
            update.adam_update(self.tables, params, points, backups, grads, exp_avgs,
                               exp_avg_sqs, coeffs, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                               weight_decay=weight_decay, decoupled=decoupled,
                               maximize=maximize, step_size=step_size,
                               bias_correction2_sqrt=bias_correction2_sqrt, eta=eta)
