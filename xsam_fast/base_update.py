"""How the base optimizer's step is fused with the interpolation.

For ``torch.optim.SGD`` and ``torch.optim.Adam``/``AdamW`` (amsgrad off) the
backends apply the base update in the same pass that forms the interpolated
gradient G. Their state lives in the base optimizer's own ``state`` under
torch's names (``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``), so
checkpoints and a later switch to the unfused path or to plain torch keep
working. Any other base optimizer (or option) takes the generic path: G is
written into ``.grad`` and the base optimizer's own ``step()`` runs.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .backends.base import Backend

FusedKind = Literal["sgd", "adam"]


def fused_kind(base: torch.optim.Optimizer, group: dict[str, Any]) -> FusedKind | None:
    """Which fused update applies to ``group``, or None for the generic path."""
    if isinstance(group["lr"], Tensor) or group.get("differentiable", False):
        return None
    if type(base) is torch.optim.SGD:
        return "sgd"
    if type(base) in (torch.optim.Adam, torch.optim.AdamW):
        betas_are_floats = not any(isinstance(b, Tensor) for b in group["betas"])
        if not group["amsgrad"] and not group.get("capturable", False) and betas_are_floats:
            return "adam"
    return None


def _scalar_dtype() -> torch.dtype:
    # torch.optim keeps Adam's step counter in this dtype (on the CPU)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def sgd_update(backend: Backend, base: torch.optim.Optimizer, group: dict[str, Any],
               params: list[Tensor], points: list[Tensor], backups: list[Tensor],
               grads: list[Tensor], coeffs: Tensor, *, eta: float | None = None) -> None:
    """Fused interpolation + ``torch.optim.SGD`` step for one bucket of ``group``.

    ``eta``: the bucket's ASAM offset (``G = c_d d / T^2 + c_g g``), None for plain XSAM.
    """
    hyper = dict(lr=group["lr"], weight_decay=group["weight_decay"], momentum=group["momentum"],
                 dampening=group["dampening"], nesterov=group["nesterov"],
                 maximize=group["maximize"], eta=eta)
    if group["momentum"] == 0:
        backend.sgd_update(params, points, backups, grads, [], coeffs, init_bufs=False, **hyper)
        return
    # params seen for the first time get buf = G (torch's rule), the others the usual update;
    # split before any buffer is created, so no param is updated twice
    fresh = [base.state[p].get("momentum_buffer") is None for p in params]
    for init in (True, False):
        idx = [i for i, f in enumerate(fresh) if f == init]
        if not idx:
            continue
        if init:
            for i in idx:
                base.state[params[i]]["momentum_buffer"] = torch.empty_like(params[i])
        bufs = [base.state[params[i]]["momentum_buffer"] for i in idx]
        backend.sgd_update([params[i] for i in idx], [points[i] for i in idx],
                           [backups[i] for i in idx], [grads[i] for i in idx], bufs, coeffs,
                           init_bufs=init, **hyper)


def adam_update(backend: Backend, base: torch.optim.Optimizer, group: dict[str, Any],
                params: list[Tensor], points: list[Tensor], backups: list[Tensor],
                grads: list[Tensor], coeffs: Tensor, *, eta: float | None = None) -> None:
    """Fused interpolation + ``torch.optim.Adam``/``AdamW`` step for one bucket of ``group``.

    ``eta``: as in :func:`sgd_update`.
    """
    beta1, beta2 = group["betas"]
    lr = group["lr"]
    decoupled = group.get("decoupled_weight_decay", isinstance(base, torch.optim.AdamW))
    by_step: dict[float, list[int]] = {}
    for i, p in enumerate(params):
        state = base.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        by_step.setdefault(float(state["step"]), []).append(i)  # CPU tensor: no device sync
    for step, idx in by_step.items():
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        backend.adam_update(
            [params[i] for i in idx], [points[i] for i in idx], [backups[i] for i in idx],
            [grads[i] for i in idx], [base.state[params[i]]["exp_avg"] for i in idx],
            [base.state[params[i]]["exp_avg_sq"] for i in idx], coeffs,
            lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"],
            weight_decay=group["weight_decay"], decoupled=decoupled, maximize=group["maximize"],
            step_size=lr / bias_correction1, bias_correction2_sqrt=bias_correction2**0.5,
            eta=eta)


FUSED_UPDATES = {"sgd": sgd_update, "adam": adam_update}
