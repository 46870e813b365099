"""Where and how the job runs: device, mixed precision, and a check that the backend can run.

Everything here is decided before training starts, so that a setting that
cannot work here stops the job at once with the reason (:class:`SetupError`),
not with a traceback minutes later.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from .errors import SetupError

DEVICES = ("auto", "cpu", "cuda")
#: --amp choices -> autocast dtype (None: full fp32)
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when a GPU is visible, else the CPU; ``"cuda"`` without a GPU is refused."""
    if name not in DEVICES:
        raise SetupError(f"unknown device {name!r}; valid: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SetupError(
            "--device cuda: no CUDA device is visible to this torch "
            f"({torch.__version__}, CUDA build: {torch.version.cuda is not None})"
        )
    return torch.device(name)


def autocast(device: torch.device, amp: str) -> ContextManager[Any]:
    """The autocast context of ``amp`` (a key of :data:`AMP_DTYPES`) on ``device``."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> "torch.amp.GradScaler | None":
    """A GradScaler for fp16 (loss scaling against underflow), None otherwise."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def check_backend(name: str, device: torch.device) -> None:
    """Raise :class:`SetupError` unless XSAM's ``backend=name`` can step float32 parameters
    on ``device``; the message carries :func:`xsam_fast.backend_status`'s reason."""
    from .. import XSAM, backend_status

    if name == "auto":
        return
    status = backend_status()
    if name not in status:
        raise SetupError(f"--backend {name}: unknown; valid: auto, {', '.join(status)}")
    if status[name]:
        raise SetupError(f"--backend {name} cannot run here: {status[name]}")
    # available, but does it take this device? one step of a one-element model tells
    p = torch.zeros(1, device=device, requires_grad=True)
    opt = XSAM([p], torch.optim.SGD, lr=0.0, rho=0.1, backend=name)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((p - 1.0) ** 2).sum()
        loss.backward()
        return loss

    try:
        opt.step(closure)
    except (RuntimeError, ValueError) as exc:
        raise SetupError(f"--backend {name} cannot step {device.type} tensors: {exc}") from exc
