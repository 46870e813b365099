"""The mechanics of an XSAM step on a :class:`~xsam_fast.plan.StepPlan`.

:class:`DeviceScalars` keeps the float64 device-scalar vector of every device
(``xsam_fast/backends/base.py``); :class:`Stepper` runs the phases of a step on
the current plan: reductions (summed over buckets, FSDP2 shard groups and
devices, in a fixed order), the derived scalars (one backend call on the first
device, copied to the others), the ascents, the update (fused, or G into
``.grad`` and the base optimizer's step), and the bookkeeping of which
parameters hold theta_0. Nothing here reads a device value on the host, except
where a caller asks for it (``nonfinite="raise"``, the generic base step).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .backends.base import (
    ALPHA,
    COEFFS,
    EPS,
    FOUND_INF,
    MAX_NORM,
    NSCALARS,
    SUMS,
    SUMSQ,
    Backend,
    TensorList,
)
from . import hooks
from .base_update import fused_update
from .distributed import local
from .plan import Bucket, StepPlan, backup_of, device_guard
from .validation import check_group, number


class DeviceScalars:
    """One float64 vector of :data:`~xsam_fast.backends.base.NSCALARS` entries per device,
    kept across steps (alpha and the skipped-step count live there)."""

    def __init__(self) -> None:
        self._vectors: dict[torch.device, Tensor] = {}
        self._fixed: dict[int, float] = {}
        self._host: tuple | None = None

    def refresh(self, opt: Any) -> None:
        """Bring ``opt.alpha``, ``opt.eps`` and ``opt.max_grad_norm`` (host attributes that a
        search or the user may change) to the devices, when they changed (checked first)."""
        host = (opt.alpha, opt.eps, opt.max_grad_norm)
        if host == self._host:
            return
        alpha, eps = number("alpha", opt.alpha, minimum=0), number("eps", opt.eps, minimum=0)
        max_norm = (
            -1.0
            if opt.max_grad_norm is None
            else number("max_grad_norm", opt.max_grad_norm, minimum=0)
        )
        for index, value in ((ALPHA, alpha), (EPS, eps), (MAX_NORM, max_norm)):
            if self._fixed.get(index) != value:
                self.set(index, value)
        self._host = host

    def on(self, device: torch.device) -> Tensor:
        sc = self._vectors.get(device)
        if sc is None:
            sc = self._vectors[device] = torch.zeros(NSCALARS, dtype=torch.float64, device=device)
            for index, value in self._fixed.items():
                sc[index] = value
        return sc

    def set(self, index: int, value: float) -> None:
        """Write a host value (alpha, eps, max_norm, a restored count) into every device's
        vector, and into those made later."""
        self._fixed[index] = value
        for sc in self._vectors.values():
            sc[index] = value

    def first(self) -> Tensor | None:
        """The vector of the first device used (the one ``stats()`` reads), if any."""
        return next(iter(self._vectors.values()), None)


class Stepper:
    """Runs the phases of a step for ``opt`` (an :class:`~xsam_fast.XSAM`)."""

    def __init__(self, opt: Any) -> None:
        self.opt = opt
        self.scalars = DeviceScalars()
        self.plan: StepPlan | None = None
        self.backed: list[Tensor] = []  # parameters holding theta_0 in their backup now
        self._backed_ids: set[int] | None = None
        self._backed_plan: StepPlan | None = None  # a plan all of whose params are backed up
        self.ascents = 0  # ascents taken in the current step

    # ------------------------------------------------------------------ plan
    def prepare(self) -> StepPlan:
        """The plan of this backward pass, with its gradients packed (rebuilt if needed)."""
        opt = self.opt
        fused = opt.fuse_base_update
        plan = self.plan
        # storage and structure are checked once per step (they do not change inside one)
        if plan is None or (self.ascents == 0 and not plan.holds(opt)):
            plan = self.plan = self._build(fused)
        if not plan.collect_grads():
            plan = self.plan = self._build(fused)
            if not plan.collect_grads():  # a plan built from these very gradients
                raise RuntimeError("XSAM: the gradients changed while the step plan was built")
        for i, group in enumerate(opt.param_groups):
            check_group(group, i)
        plan.refresh_hyper(opt.steps)
        self.scalars.refresh(opt)
        return plan

    def _build(self, fused: bool) -> StepPlan:
        opt = self.opt
        if not any(p.grad is not None for g in opt.param_groups for p in g["params"]):
            raise RuntimeError(
                "XSAM: no parameter has a gradient. Run the backward pass before first_step() "
                "and second_step(); a closure for step() must call loss.backward()"
            )
        for group in opt.param_groups:  # groups added to the base optimizer directly
            group.setdefault("rho", opt.defaults["rho"])
            group.setdefault("rho_max", opt.defaults["rho_max"])
        return StepPlan(opt, fused)

    def invalidate(self) -> None:
        self.plan = None

    # ------------------------------------------------------------------ theta_0
    def backup_all(self) -> None:
        """theta_0 of every trainable parameter, whatever has a gradient (one copy per
        device and dtype)."""
        owners = [p for g in self.opt.param_groups for p in g["params"] if p.requires_grad]
        _copy([backup_of(self.opt, p) for p in owners], [local(p) for p in owners])
        self.backed, self._backed_ids, self._backed_plan = owners, None, None

    def mark_backed(self, plan: StepPlan) -> None:
        """Every param of ``plan`` is being backed up by this step's first ascent."""
        self.backed, self._backed_ids, self._backed_plan = plan.owners, None, plan

    def _ids(self) -> set[int]:
        if self._backed_ids is None:  # built only when a later pass has another plan
            self._backed_ids = {id(o) for o in self.backed}
        return self._backed_ids

    def back_up_new(self, plan: StepPlan) -> bool:
        """Back up the params of ``plan`` that hold no theta_0 yet (they have not moved: they
        had no gradient before). Returns whether all of ``plan`` was already backed up."""
        if plan is self._backed_plan:
            return True
        held = self._ids()
        new = [o for o in plan.owners if id(o) not in held]
        if new:
            _copy([backup_of(self.opt, o) for o in new], [local(o) for o in new])
            self.backed = self.backed + new
            held.update(id(o) for o in new)
        self._backed_plan = plan
        return not new

    def restore_gradless(self, plan: StepPlan) -> None:
        """theta_0 back into backed-up params without a gradient now: they take no part in
        the update (as with the authors' restore-then-step), so they end the step, and stay
        during a search, where they started."""
        if plan is self._backed_plan and len(self.backed) == len(plan.owners):
            return
        stepped = {id(o) for o in plan.owners}
        gone = [o for o in self.backed if id(o) not in stepped]
        if gone:
            _copy([local(o) for o in gone], [backup_of(self.opt, o) for o in gone])

    def restore(self) -> None:
        """theta_0 back into every backed-up parameter."""
        if self.backed:
            _copy([local(p) for p in self.backed], [backup_of(self.opt, p) for p in self.backed])

    def end(self) -> None:
        """Forget the step: its backups' bookkeeping and its gradient lists (so that
        ``zero_grad(set_to_none=True)`` frees the gradients)."""
        self.backed, self._backed_ids, self._backed_plan = [], None, None
        if self.plan is not None:
            for b in self.plan.buckets:
                b.grads = None
        self.ascents = 0

    # ------------------------------------------------------------------ phases
    def sc(self, b: Bucket) -> Tensor:
        return self.scalars.on(b.device)

    def ascent(self, plan: StepPlan, *, backup: bool, check: bool) -> None:
        """``||g_u||^2``, the skip flag, then the ascent of every bucket (backing up first
        if ``backup``)."""

        def sumsq(b: Bucket, out: Tensor, accumulate: bool) -> None:
            weights = (b.params if backup else b.backups) if b.eta is not None else None
            b.kernels.sumsq(b.grads, out, accumulate=accumulate, weights=weights, eta=b.eta)

        first = self.ascents == 0
        self._reduce(plan, slice(SUMSQ, SUMSQ + 1), sumsq)
        self._derive(plan, lambda k, sc: k.ascent_scalars(sc, first=first, check=check))
        for b in plan.buckets:
            with b.guard():
                b.kernels.backup_ascent(
                    b.params,
                    b.grads,
                    b.backups,
                    self.sc(b),
                    b.hyper.tensor,
                    backup=backup,
                    eta=b.eta,
                )
            b.grads = None  # the next backward pass must be free to release them
        self.ascents += 1

    def final_sums(self, plan: StepPlan) -> None:
        def sums(b: Bucket, out: Tensor, accumulate: bool) -> None:
            b.kernels.final_sums(
                b.params, b.backups, b.grads, out, accumulate=accumulate, eta=b.eta
            )

        self._reduce(plan, SUMS, sums)

    def update_scalars(self, plan: StepPlan, check: bool) -> None:
        self.scalars.refresh(self.opt)  # a search may have set alpha
        self._derive(plan, lambda k, sc: k.update_scalars(sc, check=check))

    def plain_sums(self, plan: StepPlan, check: bool) -> None:
        """The skip flag of a plain base step (``interval > 1``) and ``G = g``."""

        def sumsq(b: Bucket, out: Tensor, accumulate: bool) -> None:
            b.kernels.sumsq(b.grads, out, accumulate=accumulate)

        self._reduce(plan, slice(SUMSQ, SUMSQ + 1), sumsq)
        self._derive(plan, lambda k, sc: k.plain_scalars(sc, check=check))

    def found_inf(self, plan: StepPlan) -> bool:
        """The skip flag, read on the host (a synchronisation on a GPU)."""
        return bool(self.scalars.on(plan.devices[0])[FOUND_INF] != 0)

    def update(
        self, plan: StepPlan, points: list[TensorList] | None = None, *, plain: bool = False
    ) -> bool:
        """The base update from theta_0 (or, ``plain``, from the params themselves); returns
        False when the generic base step must run (G written into ``.grad``)."""
        points = points or [b.params for b in plan.buckets]
        if plan.fused:
            base = self.opt.base_optimizer
            for b, pts in zip(plan.buckets, points):
                with b.guard():
                    created = fused_update(
                        b,
                        pts,
                        b.params if plain else b.backups,
                        self.sc(b),
                        base,
                        None if plain else b.eta,
                    )
                plan.stale |= created
            return True
        if not plain:
            for b, pts in zip(plan.buckets, points):
                with b.guard():
                    b.kernels.write_grad_restore(
                        b.params, pts, b.backups, b.grads, self.sc(b)[COEFFS], eta=b.eta
                    )
        return False

    def base_update(
        self, plan: StepPlan, points: list[TensorList] | None, check: bool, *, plain: bool = False
    ) -> None:
        """The base update (:meth:`update`), or the base optimizer's own step after G was
        written into ``.grad`` (skipped if the host reads the flag set); the base optimizer's
        own step hooks fire once around it, fused or not."""
        base = self.opt.base_optimizer
        fire = hooks.has_hooks(base)
        if fire:
            hooks.fire_pre(base, global_hooks=False)
        if not self.update(plan, points, plain=plain):  # the generic base step
            if not (check and self.found_inf(plan)):
                hooks.unhooked_step(base)()
        base._opt_called = True  # type: ignore[attr-defined]  (LR schedulers check it)
        if fire:
            hooks.fire_post(base, global_hooks=False)

    # ------------------------------------------------------------------ sums and scalars
    def _reduce(
        self, plan: StepPlan, slot: slice, run: Callable[[Bucket, Tensor, bool], None]
    ) -> None:
        """Sum a per-bucket reduction into ``sc[slot]`` of every device: over the buckets of
        a device in order; sharded (FSDP2) buckets over their shard groups (one
        all-reduce per group); then over devices, into the first device's vector."""
        comm = self.opt._comm
        for device, buckets in plan.by_device():
            out = self.scalars.on(device)[slot]
            if not plan.sharded:
                for i, b in enumerate(buckets):
                    with b.guard():
                        run(b, out, i > 0)
                continue
            by_groups: dict[tuple, list[Bucket]] = {}
            for b in buckets:
                by_groups.setdefault(b.shards, []).append(b)
            total = None
            for groups, members in by_groups.items():
                part = torch.zeros_like(out)
                for i, b in enumerate(members):
                    with b.guard():
                        run(b, part, i > 0)
                part = comm.sum(part, groups) if groups else part
                total = part if total is None else total + part
            out.copy_(total)
        if len(plan.devices) > 1:
            first = self.scalars.on(plan.devices[0])[slot]
            with device_guard(plan.devices[0]):
                for device in plan.devices[1:]:
                    first.add_(self.scalars.on(device)[slot].to(first.device))

    def _derive(self, plan: StepPlan, fn: Callable[[Backend, Tensor], None]) -> None:
        """Run a ``*_scalars`` call on the first device's vector, then copy it to the others."""
        device = plan.devices[0]
        sc = self.scalars.on(device)
        kernels = next(b.kernels for b in plan.buckets if b.device == device)
        with device_guard(device):
            fn(kernels, sc)
        for other in plan.devices[1:]:
            self.scalars.on(other).copy_(sc)


def _copy(dst: list[Tensor], src: list[Tensor]) -> None:
    """``dst[i] <- src[i]``, batched by device and dtype."""
    by_kind: dict[tuple, tuple[list[Tensor], list[Tensor]]] = {}
    for d, s in zip(dst, src):
        lists = by_kind.setdefault((d.device, d.dtype), ([], []))
        lists[0].append(d)
        lists[1].append(s)
    with torch.no_grad():
        for ds, ss in by_kind.values():
            torch._foreach_copy_(ds, ss)
