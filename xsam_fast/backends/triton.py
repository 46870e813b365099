"""The Triton backend: every phase is one multi-tensor launch (reductions: two).

The kernels live in ``xsam_fast.triton_kernels``. A packed list
(:class:`~xsam_fast.triton_kernels.packing.TritonList`) holds the device pointer
table and the layout (work list of chunks, lengths) a launch needs, built once per
pack and cached, so the number of launches per phase does not grow with the number
of tensors and a step builds nothing. Every scalar a step may change (the device
scalars ``sc``, the hyper-parameters ``hyper``, Adam's ``steps``) is read from device
memory, the step's scalar math runs in one single-program kernel per call
(``triton_kernels/scalars.py``), and reductions are two-stage and deterministic: a
step never synchronises with the host and can be captured in a CUDA graph.

Runs on CUDA tensors (each launch under its tensors' device), or on CPU tensors
under Triton's interpreter (``TRITON_INTERPRET=1`` set before
``xsam_fast.triton_kernels`` is imported), which is how it is tested on machines
without a GPU. Nothing here queries the GPU at import time.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .base import NHYPER, NSCALARS, Backend

try:
    import triton  # noqa: F401

    from ..triton_kernels import adam, config, perturb, reductions, scalars, sgd
    from ..triton_kernels.packing import Packer, TritonList

    _IMPORT_ERROR = ""
except Exception as exc:  # no Triton, or a Triton this code does not run on
    config = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def _interpreting() -> bool:
    """Whether the kernels were built for Triton's CPU interpreter."""
    return config is not None and config.INTERPRET


def _on(where: TritonList | Tensor):
    """Context in which a launch runs on the device of ``where`` (a packed list or a
    tensor): Triton launches on the current device."""
    if isinstance(where, Tensor):
        device = where.device
    elif isinstance(where, TritonList):
        device = where.device
    else:
        raise TypeError(f"expected a list packed by the triton backend, got {type(where)}")
    if device is not None and device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _check_vector(
    t: Tensor, what: str, device: torch.device | None, n: int, float64: bool = True
) -> None:
    """``t`` must be a contiguous float (float64 if ``float64``) vector of at least ``n``
    entries on ``device`` (the kernels read it by address)."""
    if (
        (t.dtype != torch.float64 if float64 else not t.dtype.is_floating_point)
        or t.dim() != 1
        or t.numel() < n
        or t.stride(0) != 1
        or (device is not None and t.device != device)
    ):
        raise ValueError(
            f"{what} must be a contiguous {'float64' if float64 else 'float'} "
            f"vector of {n} entries on {device}, got a {t.dtype} tensor of shape "
            f"{tuple(t.shape)}, strides {t.stride()} on {t.device}"
        )


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
        self.packer = Packer(block or config.DEFAULT_BLOCK, self.supports)

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        if config is None:
            return False, f"triton is not importable ({_IMPORT_ERROR})"
        if _interpreting():
            return True, ""
        if not torch.cuda.is_available():
            return False, (
                "no CUDA device is visible and TRITON_INTERPRET is not 1 (set it "
                "before importing xsam_fast to run the kernels on the CPU, slowly)"
            )
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        if config is None or dtype not in config.DTYPES:
            return False
        kind = torch.device(device).type
        return kind == "cpu" if _interpreting() else kind == "cuda"

    def pack(self, tensors, like=None, *, grads=False) -> TritonList:
        return self.packer.pack(tensors, like, grads=grads)

    # ------------------------------------------------------------ reductions
    def sumsq(self, grads, out, *, accumulate, weights=None, eta=None):
        if eta is not None and weights is None:
            raise ValueError("sumsq with eta needs the weights (theta_0) that T is made of")
        with _on(grads):
            reductions.sumsq(self.packer, grads, out, accumulate, weights, eta)

    def final_sums(self, points, backups, grads, out, *, accumulate, eta=None):
        with _on(points):
            reductions.final_sums(self.packer, points, backups, grads, out, accumulate, eta)

    # ------------------------------------------------------------ scalars
    def ascent_scalars(self, sc, *, first, check):
        _check_vector(sc, "sc", None, NSCALARS)
        with _on(sc):
            scalars.ascent_scalars(sc, first, check)

    def update_scalars(self, sc, *, check):
        _check_vector(sc, "sc", None, NSCALARS)
        with _on(sc):
            scalars.update_scalars(sc, check)

    def plain_scalars(self, sc, *, check):
        _check_vector(sc, "sc", None, NSCALARS)
        with _on(sc):
            scalars.plain_scalars(sc, check)

    # ------------------------------------------------------------ elementwise
    def backup_ascent(self, params, grads, backups, sc, hyper, *, backup, eta=None):
        with _on(params):
            self._check_scalars(params, sc, hyper)
            perturb.backup_ascent(self.packer, params, grads, backups, sc, hyper, backup, eta)

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        with _on(out):
            _check_vector(coeffs, "coeffs", out.device, 2, float64=False)
            perturb.interpolate(self.packer, out, points, backups, grads, coeffs, False, eta)

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        with _on(params):
            _check_vector(coeffs, "coeffs", params.device, 2, float64=False)
            perturb.interpolate(self.packer, params, points, backups, grads, coeffs, True, eta)

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
        if momentum and bufs is None:
            raise ValueError("sgd_update with momentum needs the momentum buffers")
        with _on(params):
            self._check_scalars(params, sc, hyper)
            sgd.sgd_update(
                self.packer,
                params,
                points,
                backups,
                grads,
                bufs,
                sc,
                hyper,
                weight_decay=weight_decay,
                momentum=momentum,
                nesterov=nesterov,
                maximize=maximize,
                init_bufs=init_bufs,
                eta=eta,
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
        with _on(params):
            self._check_scalars(params, sc, hyper)
            _check_vector(steps, "steps", params.device, len(params), float64=False)
            adam.adam_update(
                self.packer,
                params,
                points,
                backups,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                sc,
                hyper,
                weight_decay=weight_decay,
                decoupled=decoupled,
                maximize=maximize,
                eta=eta,
            )

    @staticmethod
    def _check_scalars(params: TritonList, sc: Tensor, hyper: Tensor) -> None:
        _check_vector(sc, "sc", params.device, NSCALARS)
        _check_vector(hyper, "hyper", params.device, NHYPER)
