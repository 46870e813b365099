"""fp16 training with ``torch.amp.GradScaler``: the scaler bookkeeping of one XSAM step.

An XSAM step runs ``steps + 1`` backward passes, each on a scaled loss, while a
plain ``GradScaler`` unscales once per step (``unscale_`` may be called once per
optimizer between two ``update()`` calls). So XSAM unscales the gradients of
every pass itself (multiplying by ``1 / scale``, as ``unscale_`` does, before any
norm is taken), and decides on skipping from the step's reductions, which it
computes anyway: a non-finite ``||g||^2`` (ascent) or ``[||g||^2, ||d||^2, <d, g>]``
(final pass) means an inf or NaN gradient somewhere (on any rank, since sharded
sums are reduced across the shard group first). The decision stays on the
device (the step's ``FOUND_INF`` flag): the update kernels then restore theta_0
and leave the base optimizer's state untouched, and the flag is recorded in the
scaler's per-optimizer state, so that the user's ``scaler.update()`` backs the
scale off exactly as after a ``scaler.step(optimizer)`` that skipped; a finite
step records "no overflow", so the growth tracker advances. No host read
(except with a base optimizer that is not fused, whose ``step()`` the host must
decide to call).

Usage: see :meth:`xsam_fast.XSAM.step` (``scaler=``) and ``docs/distributed_amp.md``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

try:  # the stage marker GradScaler.step leaves behind
    from torch.amp.grad_scaler import OptState
except ImportError:  # pragma: no cover  (torch < 2.3)
    from torch.cuda.amp.grad_scaler import OptState  # type: ignore[no-redef]


def scaler_enabled(scaler: Any) -> bool:
    return scaler is not None and scaler.is_enabled()


class ScaledStep:
    """Unscaling and overflow tracking of one XSAM step with one enabled ``GradScaler``."""

    def __init__(self, scaler: Any) -> None:
        if getattr(scaler, "_scale", None) is None:
            raise RuntimeError(
                "the GradScaler has no scale yet: call scaler.scale(loss).backward() "
                "in the closure (in every pass) before stepping"
            )
        self.scaler = scaler

    def unscale_(self, grads: Sequence[Tensor]) -> None:
        """Divide the gradients of the last backward pass by the scale, in place.

        Like ``GradScaler.unscale_``: the reciprocal is taken in float64, and fp16
        gradients are refused (keep fp32 parameters and use autocast).
        """
        scale = self.scaler._scale
        inv_scale = scale.double().reciprocal().float()
        by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for g in grads:
            if g.dtype == torch.float16:
                raise ValueError(
                    "Attempting to unscale FP16 gradients (keep fp32 parameters and "
                    "use autocast, as with GradScaler)"
                )
            by_kind.setdefault((g.device, g.dtype), []).append(g)
        for (device, _), tensors in by_kind.items():
            torch._foreach_mul_(tensors, inv_scale.to(device))

    def record(self, optimizer: torch.optim.Optimizer, found_inf: Tensor) -> None:
        """Leave in the scaler what ``scaler.step(optimizer)`` leaves: this step's overflow
        flag (``found_inf``, a 0-d device tensor, read by ``scaler.update()`` on the device)
        and the "stepped" stage."""
        device = self.scaler._scale.device
        state = self.scaler._per_optimizer_states[id(optimizer)]
        # a fresh (1,) float32 tensor: update() adds the recorded flags in place into the first
        flag = found_inf.reshape(1).to(device=device, dtype=torch.float32, copy=True)
        state["found_inf_per_device"] = {device: flag}
        state["stage"] = OptState.STEPPED


def unscale_pass(opt: Any, plan: Any, scaler: Any, first: bool) -> None:
    """With an enabled GradScaler: unscale this backward pass's gradients in place (the
    step's :class:`ScaledStep` starts at its first pass)."""
    enabled = scaler_enabled(scaler)
    if opt._amp is None and enabled and first:
        opt._amp = ScaledStep(scaler)
    if enabled != (opt._amp is not None) or (enabled and scaler is not opt._amp.scaler):
        raise ValueError(
            "pass the same enabled GradScaler (scaler=...) to every first_step() "
            "and second_step() of a step, or to none of them"
        )
    if opt._amp is not None:
        opt._amp.unscale_([g for b in plan.buckets for g in b.grads])
