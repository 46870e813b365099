"""Data-parallel XSAM: process groups, sharded parameters, averaged search losses.

What communication an XSAM step needs depends on how the parameters are laid out:

* **DDP** (every rank holds the whole model, gradients are averaged by DDP's
  backward): the gradient norms, ``||d||`` and ``<d, g>`` are already the same on
  every rank and must not be reduced again. Only the alpha search needs one
  collective: each rank evaluates the candidate points on its own batch, and the
  losses are averaged across the data-parallel group (one all-reduce of the
  stacked losses per ``evaluate`` call of the search strategy; the ``"grid"``
  strategy evaluates every point in one call, so one all-reduce per search).
* **FSDP2** (``torch.distributed.fsdp.fully_shard``: parameters and gradients are
  ``DTensor`` shards): the backends work on the local shards (plain tensors, the
  DTensors' own storage), so every reduction is a partial sum; the 1-element
  ``||g||^2`` of an ascent and the 3-element ``[||g||^2, ||d||^2, <d, g>]`` are
  summed with one all-reduce each over the ranks the parameters are sharded
  over (their mesh's shard dimension: the whole group for FSDP, one replica's
  ranks for HSDP, whose replicas already hold the same gradients). Search losses are
  averaged as with DDP. A search needs the model (``XSAM(model=...)``, or
  ``second_step(model=...)``): FSDP2's root module keeps its gathered parameters
  after a forward-only pass, so XSAM reshards the FSDP2 modules after each
  search forward (else the next point would be evaluated with stale weights).
  The base update then runs unfused (``base_optimizer.step()`` on the DTensors,
  whose state stays DTensors).

``process_group`` (``XSAM(process_group=...)``) is the data-parallel group over
which search losses are averaged; ``None`` means the default group when
``torch.distributed`` is initialised, and no communication otherwise. Partial
sums go over each parameter's own shard groups, which must lie within the
data-parallel group (XSAM raises when the shards span more ranks than it has).

Per-rank perturbation (m-sharpness): run every pass of the step under
``ddp_model.no_sync()``, so that each rank ascends along its own gradient, and
build the optimizer with ``base_optimizer=grad_averaging(torch.optim.SGD)``: the
interpolated gradient G, which then differs between ranks, is averaged across
the group right before the base step, so the parameters stay identical.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

Group = Any  # torch.distributed.ProcessGroup (absent from builds without distributed)


def _dtensor_type() -> type | None:
    if not dist.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4
        try:
            from torch.distributed._tensor import DTensor  # type: ignore[no-redef]
        except ImportError:
            return None
    return DTensor


_DTENSOR = _dtensor_type()


def is_dtensor(t: Tensor) -> bool:
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def local(t: Tensor) -> Tensor:
    """The local tensor of a DTensor (its storage itself: in-place writes update the
    DTensor), or ``t`` unchanged."""
    return t._local_tensor if is_dtensor(t) else t  # type: ignore[attr-defined]


def shard_groups(p: Tensor) -> tuple[Group, ...]:
    """Process groups over which the partial sums of ``p``'s local shard must be summed:
    one per mesh dimension on which the DTensor ``p`` is sharded (with more than one
    rank); ``()`` for plain tensors and replicated DTensors."""
    if not is_dtensor(p):
        return ()
    mesh = p.device_mesh  # type: ignore[attr-defined]
    groups = []
    for dim, placement in enumerate(p.placements):  # type: ignore[attr-defined]
        if placement.is_shard() and mesh.size(dim) > 1:
            groups.append(mesh.get_group(dim))
    return tuple(groups)


def fsdp_modules(model: Any) -> list[Any]:
    """The FSDP2 (``fully_shard``) modules of ``model``; [] without a model or FSDP2."""
    if model is None or not dist.is_available():
        return []
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def reshard(modules: Sequence[Any]) -> None:
    """Free the all-gathered parameters of FSDP2 modules, so that the next forward gathers
    the shards again. The root module keeps its parameters gathered after a forward
    (they are usually needed by the backward that follows); after a forward-only pass
    of the alpha search that copy goes stale as soon as XSAM writes the next point into
    the shards."""
    for m in modules:
        m.reshard()


def resolve_group(process_group: Group | None) -> Group | None:
    """The user's group; else the default group when torch.distributed is initialised;
    else None (a single process: no communication)."""
    if process_group is not None:
        return process_group
    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


def group_size(group: Group | None) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _all_reduce(t: Tensor, group: Group) -> None:
    """Sum ``t`` in place across ``group`` (the one collective this module issues)."""
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


class Communicator:
    """The collectives of an XSAM step, bound to the optimizer's ``process_group``.

    The group is resolved at each call (``None``: the default group once
    torch.distributed is initialised, else no communication), so an optimizer
    built before ``init_process_group`` still communicates.
    """

    def __init__(self, process_group: Group | None = None) -> None:
        self.process_group = process_group

    @property
    def group(self) -> Group | None:
        return resolve_group(self.process_group)

    def shard_groups(self, p: Tensor) -> tuple[Group, ...]:
        """:func:`shard_groups` of ``p``, after checking that they lie within the
        data-parallel group: ``p`` sharded over more ranks than the group has (or a
        number that does not divide it) means the group is not the one training ``p``."""
        groups = shard_groups(p)
        sharded_over = 1
        for g in groups:
            sharded_over *= dist.get_world_size(g)
        size = group_size(self.group)
        if groups and size % sharded_over:
            raise NotImplementedError(
                f"a parameter is sharded over {sharded_over} ranks but XSAM's process group has "
                f"{size}: the shards must lie within the data-parallel group (process_group=)"
            )
        return groups

    @staticmethod
    def sum(partial: Tensor, groups: Sequence[Group]) -> Tensor:
        """The sum of ``partial`` over the ranks of ``groups`` (a shard group per sharded
        mesh dimension; one all-reduce each; a copy)."""
        total = partial.clone()  # a fresh buffer: the collective writes in place
        for group in groups:
            _all_reduce(total, group)
        return total

    def mean(self, losses: Tensor) -> Tensor:
        """Search losses averaged over the group (see :func:`average_losses`)."""
        return average_losses(losses, self.process_group)


def average_losses(losses: Tensor, process_group: Group | None) -> Tensor:
    """Average the stacked search losses across the data-parallel group (one all-reduce).

    Unchanged without a group (or with a one-rank group). Otherwise summed in float64
    (16-bit losses included) and divided by the group size: with equal local batch
    sizes and mean-reduced losses, the loss of the global batch.
    """
    group = resolve_group(process_group)
    size = group_size(group)
    if size == 1:
        return losses
    total = losses.detach().to(torch.float64).clone()
    _all_reduce(total, group)
    return total / size


def average_grads_(params: Sequence[Tensor], process_group: Group | None = None) -> None:
    """Average ``p.grad`` of ``params`` across the group in place: one all-reduce per
    (device, dtype) of a flat buffer. Nothing happens without a group of > 1 ranks."""
    group = resolve_group(process_group)
    size = group_size(group)
    if size == 1:
        return
    by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            g = local(p.grad)
            by_kind.setdefault((g.device, g.dtype), []).append(g)
    for grads in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        _all_reduce(flat, group)
        flat.div_(size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def grad_averaging(
    base_optimizer: type[torch.optim.Optimizer], process_group: Group | None = None
) -> type[torch.optim.Optimizer]:
    """A subclass of ``base_optimizer`` whose ``step()`` first averages the gradients
    across ``process_group`` (default: the default group).

    For per-rank perturbation (m-sharpness) with DDP: every pass of the XSAM step
    runs under ``no_sync()``, so each rank holds its own interpolated gradient G,
    and ``XSAM(params, grad_averaging(torch.optim.SGD), ...)`` averages G before
    the base step. (The base update then runs unfused: XSAM writes G into
    ``.grad`` and calls this ``step()``.)
    """

    class GradAveraging(base_optimizer):  # type: ignore[valid-type, misc]
        def step(self, closure: Callable[[], Any] | None = None) -> Any:
            params = [p for g in self.param_groups for p in g["params"]]
            with torch.no_grad():
                average_grads_(params, process_group)
            return super().step(closure)

    GradAveraging.__name__ = GradAveraging.__qualname__ = f"GradAveraging{base_optimizer.__name__}"
    return GradAveraging
