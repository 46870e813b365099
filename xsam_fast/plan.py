"""The step plan: what a step does, built once and reused until it changes.

Everything that depends only on which parameters have gradients, their param
groups, dtypes, devices and storage is computed when the plan is built: the
*buckets* (tensors of one group, device, dtype and geometry, handled by one
backend), the lists the backends keep in their own form (packed params,
backups and base-optimizer state), the per-bucket hyper-parameter vectors, and
the fused base update of each bucket. A step then checks that the plan still
holds (:meth:`StepPlan.holds`: O(1) per group plus one ``data_ptr()`` per
parameter), packs the gradients once per backward pass
(:meth:`StepPlan.collect_grads`), and makes one backend call per bucket per
phase. Whatever changes the structure (a parameter gains or loses its
gradient, storage is replaced, a group is added, the base optimizer's state is
reloaded, a gradient's strides change) makes the plan be rebuilt.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor

from .backends import get_backend
from .backends.base import (
    H_ADAM_EPS,
    H_BETA1,
    H_BETA2,
    H_DAMPENING,
    H_LR,
    H_MOMENTUM,
    H_RADIUS,
    H_WEIGHT_DECAY,
    NHYPER,
    Backend,
)
from .backends.packed import LayoutError, TensorList, is_dense
from .base_update import FusedKind, fused_kind
from .distributed import Communicator, is_dtensor, local


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Run kernels under ``device`` (CUDA launches go to the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class Hyper:
    """A bucket's float64 hyper-parameter vector on its device (``H_*`` of base.py).

    Rewritten entry by entry (``fill_``), and only where a value changed, so that a step
    makes no tensor from Python data; a tensor-valued learning rate is copied in at
    every step (a device copy, capturable in a CUDA graph).
    """

    def __init__(self, device: torch.device) -> None:
        self.tensor = torch.zeros(NHYPER, dtype=torch.float64, device=device)
        self._views = list(self.tensor.unbind(0))
        self._values: list[Any] = [None] * NHYPER

    def set(self, index: int, value: float | Tensor) -> None:
        if isinstance(value, Tensor):
            self._views[index].copy_(value)
            self._values[index] = None
        elif value != self._values[index]:
            self._views[index].fill_(value)
            self._values[index] = value


@dataclass(eq=False)
class Bucket:
    """Tensors of one param group on one device with one dtype, handled by one backend."""

    group: dict[str, Any]
    kernels: Backend  # the backend object (XSAM.backend is its name)
    device: torch.device
    dtype: torch.dtype
    eta: float | None  # adaptive (ASAM) tensors: T = |theta_0| + eta; None: T = 1
    shards: tuple  # FSDP2: the groups the local shards' partial sums are all-reduced over
    owners: list[Tensor]  # the parameters as the model holds them (DTensors under FSDP2)
    locals: list[Tensor]  # their local tensors, which the backends read and write
    params: TensorList
    backups: TensorList
    hyper: Hyper
    kind: FusedKind | None = None  # the fused base update, None: the base optimizer steps
    init_bufs: bool = False  # SGD momentum buffers are created by this step
    state: list[TensorList] = field(default_factory=list)  # bufs, or exp_avgs + exp_avg_sqs
    steps: Tensor | None = None  # Adam: one step count per tensor (views in the base state)
    grads: TensorList | None = None  # the current backward pass's gradients

    def guard(self) -> contextlib.AbstractContextManager:
        return device_guard(self.device)


class StepPlan:
    """Buckets and their lists for the parameters that have a gradient now.

    Args:
        opt: the :class:`~xsam_fast.XSAM` optimizer (its groups, base optimizer,
            backend name, geometry and communicator are read).
        fused: whether the base update may be fused (False: the base optimizer steps).
    """

    def __init__(self, opt: Any, fused: bool) -> None:
        self.base = opt.base_optimizer
        self.groups = opt.param_groups
        comm: Communicator = opt._comm
        keyed: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
        self.gradless: list[Tensor] = []  # trainable parameters without a gradient now
        for gi, group in enumerate(self.groups):
            for owner in group["params"]:
                if owner.grad is None:
                    if owner.requires_grad:
                        self.gradless.append(owner)
                    continue
                p, g = local(owner), local(owner.grad)
                if g.is_sparse:
                    raise RuntimeError(
                        "XSAM does not support sparse gradients; use a dense "
                        "embedding (sparse=False) for the parameters it steps"
                    )
                dense = is_dense(p) and g.stride() == p.stride()
                key = (
                    gi,
                    p.device,
                    p.dtype,
                    eta_of(opt, owner),
                    comm.shard_groups(owner),
                    dense,
                    _fresh_momentum(self.base, group, owner),
                )
                keyed.setdefault(key, []).append((owner, p))
        self.sharded = any(key[4] for key in keyed)
        self.dtensor = any(is_dtensor(o) for pairs in keyed.values() for o, _ in pairs)
        fused = fused and not self.dtensor
        self.buckets = [self._bucket(opt, key, pairs, fused) for key, pairs in keyed.items()]
        self.owners = [o for b in self.buckets for o in b.owners]
        # storage is checked only where the packed lists keep addresses (and under FSDP2,
        # whose local shards the plan holds)
        self._locals = [
            p
            for b in self.buckets
            for p in b.locals
            if self.dtensor or not b.kernels.follows_storage
        ]
        self._pointers = [p.data_ptr() for p in self._locals]
        self._structure = _structure(opt)  # after the state this build created
        self.devices = list(dict.fromkeys(b.device for b in self.buckets))
        self.fused = fused and all(b.kind is not None for b in self.buckets)
        self.stale = False  # set when a step changed what the plan depends on

    def _bucket(
        self, opt: Any, key: tuple, pairs: list[tuple[Tensor, Tensor]], fused: bool
    ) -> Bucket:
        gi, device, dtype, eta, shards, dense, fresh = key
        group = self.groups[gi]
        backend = get_backend(opt.backend if dense else "reference", device, dtype)
        owners = [o for o, _ in pairs]
        locals_ = [p for _, p in pairs]
        params = backend.pack(locals_)
        backups = backend.pack([backup_of(opt, o) for o in owners], like=params)
        bucket = Bucket(
            group,
            backend,
            device,
            dtype,
            eta,
            shards,
            owners,
            locals_,
            params,
            backups,
            Hyper(device),
        )
        kind = fused_kind(self.base, group) if fused else None
        if kind == "adam":
            self._adam_state(bucket)
        elif kind == "sgd" and group["momentum"] != 0:
            bucket.init_bufs = fresh
            if not fresh:
                bucket.state = [
                    backend.pack(
                        [self.base.state[o]["momentum_buffer"] for o in owners], like=params
                    )
                ]
        bucket.kind = kind
        return bucket

    def _adam_state(self, b: Bucket) -> None:
        """Adam's moments packed, and the step counts gathered into one tensor whose
        entries the base optimizer's state holds as views (so one ``add_`` advances all)."""
        state = self.base.state
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        counts = []
        for o, p in zip(b.owners, b.locals):
            s = state[o]
            if not s:
                s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                counts.append(torch.zeros((), dtype=dtype, device=b.device))
            else:
                counts.append(torch.as_tensor(s["step"]).to(device=b.device, dtype=dtype))
        b.steps = torch.stack(counts) if counts else torch.zeros(0, dtype=dtype, device=b.device)
        for o, view in zip(b.owners, b.steps.unbind(0)):
            state[o]["step"] = view
        b.state = [
            b.kernels.pack([state[o][k] for o in b.owners], like=b.params)
            for k in ("exp_avg", "exp_avg_sq")
        ]

    # ------------------------------------------------------------------ checks
    def holds(self, opt: Any) -> bool:
        """Whether the plan still describes ``opt``: same structure, and the same storage of
        every stepped parameter whose packed lists keep addresses."""
        return (
            not self.stale
            and _structure(opt) == self._structure
            and [p.data_ptr() for p in self._locals] == self._pointers
        )

    def collect_grads(self) -> bool:
        """Pack this backward pass's gradients; False when the plan no longer holds (a
        parameter gained or lost its gradient, or a gradient's layout changed)."""
        for p in self.gradless:
            if p.grad is not None:
                return False
        for b in self.buckets:
            grads = [o.grad for o in b.owners]
            try:
                if self.dtensor:
                    grads = [local(g) for g in grads]
                b.grads = b.kernels.pack(grads, like=b.params, grads=True)
            except (LayoutError, AttributeError, TypeError):  # a None, or a new layout
                return False
        return True

    def refresh_hyper(self, steps: int) -> None:
        """Write each bucket's hyper-parameters (ascent radius and base update) into its
        device vector; only changed values are written."""
        for b in self.buckets:
            g = b.group
            h = b.hyper
            h.set(H_RADIUS, g["rho"] / steps)
            if b.kind is None:
                continue
            h.set(H_LR, g["lr"])
            h.set(H_WEIGHT_DECAY, g["weight_decay"])
            if b.kind == "sgd":
                h.set(H_MOMENTUM, g["momentum"])
                h.set(H_DAMPENING, g["dampening"])
            else:
                beta1, beta2 = g["betas"]
                h.set(H_BETA1, beta1)
                h.set(H_BETA2, beta2)
                h.set(H_ADAM_EPS, g["eps"])

    def by_device(self) -> Iterator[tuple[torch.device, list[Bucket]]]:
        for device in self.devices:
            yield device, [b for b in self.buckets if b.device == device]


def eta_of(opt: Any, p: Tensor) -> float | None:
    """``eta`` for a tensor stepped in ASAM's geometry, None for one with ``T = 1``."""
    if opt.adaptive and (not opt.adaptive_weights_only or p.dim() > 1):
        return opt.eta
    return None


def backup_of(opt: Any, p: Tensor) -> Tensor:
    """The tensor holding ``p``'s theta_0 (in the optimizer's state, made on first use)."""
    state = opt.state[p]
    if "theta0" not in state:
        state["theta0"] = torch.empty_like(local(p))
    return state["theta0"]


def _structure(opt: Any) -> tuple:
    """What the plan's structure depends on, cheap to compare (no per-parameter work):
    the groups and their parameter lists, each group's fused update, the base
    optimizer's state dict, and the optimizer's backend and geometry settings."""
    base = opt.base_optimizer
    groups = tuple(
        (id(g), id(g["params"]), len(g["params"]), fused_kind(base, g), g.get("momentum", 0) != 0)
        for g in opt.param_groups
    )
    return (
        groups,
        id(base.state),
        len(base.state),
        opt.backend,
        opt.fuse_base_update,
        opt.adaptive,
        opt.eta,
        opt.adaptive_weights_only,
    )


def _fresh_momentum(base: torch.optim.Optimizer, group: dict[str, Any], p: Tensor) -> bool:
    """Whether SGD will create ``p``'s momentum buffer at this step (torch: ``buf = G``)."""
    return (
        type(base) is torch.optim.SGD
        and group.get("momentum", 0) != 0
        and base.state.get(p, {}).get("momentum_buffer") is None
    )
