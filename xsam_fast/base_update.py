"""How the base optimizer's step is fused with the interpolation.

For ``torch.optim.SGD`` and ``torch.optim.Adam``/``AdamW`` (amsgrad off) the
backends apply the base update in the same pass that forms the interpolated
gradient G. Their state lives in the base optimizer's own ``state`` under
torch's names (``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``), so
checkpoints and a later switch to the unfused path or to plain torch keep
working; Adam's step counts are views into one tensor per bucket on the
parameters' device (advanced on the device, never read by the host). Any other
base optimizer (or option) takes the generic path: G is written into ``.grad``
and the base optimizer's own ``step()`` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from .backends.base import OK
from .backends.packed import TensorList

if TYPE_CHECKING:
    from .plan import Bucket

FusedKind = Literal["sgd", "adam"]


def fused_kind(base: torch.optim.Optimizer, group: dict[str, Any]) -> FusedKind | None:
    """Which fused update applies to ``group``, or None for the generic path.

    The learning rate may be a float or a tensor (copied into the device
    hyper-parameters at each step); every other hyper-parameter must be a float.
    """
    if group.get("differentiable", False) or isinstance(group.get("weight_decay"), Tensor):
        return None
    if type(base) is torch.optim.SGD:
        floats = not any(isinstance(group[k], Tensor) for k in ("momentum", "dampening"))
        return "sgd" if floats else None
    if type(base) in (torch.optim.Adam, torch.optim.AdamW):
        floats = not any(isinstance(b, Tensor) for b in group["betas"])
        if not group["amsgrad"] and floats and not isinstance(group["eps"], Tensor):
            return "adam"
    return None


def fused_update(
    b: Bucket,
    points: TensorList,
    backups: TensorList,
    sc: Tensor,
    base: torch.optim.Optimizer,
    eta: float | None,
) -> bool:
    """Interpolate and step the base optimizer on bucket ``b`` in one pass, from
    ``backups`` (theta_0; the params themselves for a plain step, where ``G = g``).

    Returns True when the step created state that the plan does not hold yet (fresh
    SGD momentum buffers): the plan must then be rebuilt before the next step.
    """
    g = b.group
    if b.kind == "sgd":
        momentum = g["momentum"] != 0
        created = False
        if momentum and b.init_bufs:  # torch's rule: buf = G at a buffer's first step
            for o, p in zip(b.owners, b.locals):
                base.state[o]["momentum_buffer"] = torch.zeros_like(p)
            b.state = [
                b.kernels.pack([base.state[o]["momentum_buffer"] for o in b.owners], like=b.params)
            ]
            created = True
        b.kernels.sgd_update(
            b.params,
            points,
            backups,
            b.grads,
            b.state[0] if momentum else None,
            sc,
            b.hyper.tensor,
            weight_decay=g["weight_decay"] != 0,
            momentum=momentum,
            nesterov=g["nesterov"],
            maximize=g["maximize"],
            init_bufs=b.init_bufs,
            eta=eta,
        )
        return created
    assert b.steps is not None
    b.steps.add_(sc[OK])  # a skipped step does not count
    decoupled = g.get("decoupled_weight_decay", isinstance(base, torch.optim.AdamW))
    b.kernels.adam_update(
        b.params,
        points,
        backups,
        b.grads,
        b.state[0],
        b.state[1],
        b.steps,
        sc,
        b.hyper.tensor,
        weight_decay=g["weight_decay"] != 0,
        decoupled=decoupled,
        maximize=g["maximize"],
        eta=eta,
    )
    return False
