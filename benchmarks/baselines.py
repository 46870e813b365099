"""BASELINES for the benchmark harness. Not product code: do not import from xsam_fast.

Three XSAM implementations the fused backends are measured against. All follow
the authors' call sequence (``backup_param()``, ``first_step(step)``, backward
at the ascent point, ``second_step(update_alpha=False)``), fixed alpha only,
and compute the update of ``docs/algorithm.md``:

``AuthorsStyleXSAM``
    Written by us from the math, performing the same tensor operations in the
    same order as the authors' public class (Cccjl219/XSAM, ``utils/xsam.py``):
    a Python loop over tensors, global norms as the norm of a stack of
    per-tensor norms, ``v0`` and ``v1`` materialised in the optimizer state,
    a per-tensor dot product, ``torch.where`` writing a new ``p.grad``, the
    parameters restored by assigning a clone of the backup, then the base
    optimizer's ``step()``. One deliberate difference: the cosine is clamped
    to [-1, 1] before ``arccos`` (the authors' code can produce NaN there; the
    clamp is one scalar op and costs nothing measurable).

``ForeachXSAM``
    A careful ``torch._foreach_*`` implementation of the same step, the best we
    can do with stock PyTorch ops: foreach norms, a foreach ascent, no ``v0``/
    ``v1`` (the interpolated gradient ``G = c_d d + c_g g`` is formed in place
    in ``p.grad``, ``d`` in place in the parameters), then the base optimizer
    (SGD by default) with ``foreach=True``. It reads the two step scalars on the
    host (one ``.item()``/``.tolist()`` per phase) so that it can use the
    scalar-``alpha`` foreach kernels, which move fewer bytes than the
    tensor-scalar variants; on a CPU that read costs nothing. PyTorch has no
    foreach dot product, so ``<d, g>`` is a per-tensor ``torch.dot``.

``CompiledXSAM``
    ``torch.compile`` of the reference path itself: the phases of
    ``xsam_fast.backends.reference`` and the scalar math of ``xsam_fast.coefficients``
    (sum of squares, skip flag, backup and ascent; final sums, coefficients, fused
    SGD update from theta_0) as the optimizer runs them on one bucket, wrapped in
    two functions over the lists of parameters, gradients, backups and momentum
    buffers and compiled once per case (Inductor fuses the per-tensor loops into a
    few kernels; the step's scalars stay on the device, no host read). Nothing of
    the arithmetic is restated here. SGD only (momentum, dampening, Nesterov,
    weight decay), as benchmarked. The first step's update (it creates the momentum
    buffers) runs uncompiled; the ascent compiles in the first step and the update
    in the second, so a benchmark needs two warm-up steps. ``compile_backend``
    (default Inductor) is ``torch.compile``'s backend.

In all of them, ``rho`` is the radius of ONE ascent (the authors' convention; equal to
xsam_fast's total ``rho`` for ``steps=1``, the case benchmarked).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Iterable

import torch
from torch import Tensor

from xsam_fast import coefficients
from xsam_fast.backends import base as B
from xsam_fast.backends.packed import TensorList
from xsam_fast.backends.reference import ReferenceBackend
from xsam_fast.plan import Hyper
from xsam_fast.stepper import DeviceScalars

__all__ = ["AuthorsStyleXSAM", "ForeachXSAM", "CompiledXSAM", "BASELINES"]


def _stacked_norm(tensors: list[Tensor]) -> Tensor:
    """Global L2 norm as the authors compute it: norm of the stack of per-tensor norms."""
    return torch.norm(torch.stack([t.norm(p=2) for t in tensors]), p=2)


class _BaselineXSAM(torch.optim.Optimizer):
    """Shared constructor: XSAM hyper-parameters, then the base optimizer on the same groups."""

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.SGD,
        *,
        rho: float = 0.15,
        alpha: float = 1.0,
        eps: float = 1e-12,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0 or eps < 0 or not math.isfinite(alpha):
            raise ValueError("rho and eps must be >= 0 and alpha finite")
        super().__init__(params, dict(base_kwargs))
        self.base_optimizer = self._make_base(base_optimizer, base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.rho = rho
        self.alpha = float(alpha)
        self.eps = eps

    def _make_base(
        self, cls: type[torch.optim.Optimizer], kwargs: dict[str, Any]
    ) -> torch.optim.Optimizer:
        return cls(self.param_groups, **kwargs)

    def _with_grad(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        raise RuntimeError("call backup_param(), first_step() and second_step() instead")


class AuthorsStyleXSAM(_BaselineXSAM):
    """BASELINE: the authors' sequence of per-tensor operations (see module docstring)."""

    @torch.no_grad()
    def backup_param(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["data_0"] = p.data.clone()

    @torch.no_grad()
    def first_step(self, step: int = 0) -> None:
        params = self._with_grad()
        self.grad_norm = _stacked_norm([p.grad for p in params])
        step_size = self.rho / (self.grad_norm + self.eps)
        for p in params:
            p.data += p.grad * step_size

    @torch.no_grad()
    def second_step(self, update_alpha: bool = False, *args: Any, **kwargs: Any) -> Tensor:
        if update_alpha:
            raise NotImplementedError("the baselines run fixed alpha only")
        params = self._with_grad()
        # ||g|| at the ascent point; it is also the length of the update
        grad_norm = _stacked_norm([p.grad for p in params])
        scale = grad_norm
        # v0: the displacement, stored, then normalised in place
        for p in params:
            self.state[p]["v0"] = p.data - self.state[p]["data_0"]
        d_norm = _stacked_norm([self.state[p]["v0"] for p in params])
        for p in params:
            self.state[p]["v0"] /= d_norm + self.eps
        # v1: the normalised gradient, stored
        for p in params:
            self.state[p]["v1"] = p.grad / (grad_norm + self.eps)
        # angle from a per-tensor dot product (clamped: see module docstring)
        dot = 0
        for p in params:
            dot += (self.state[p]["v0"] * self.state[p]["v1"]).sum()
        psi = torch.arccos(torch.clamp(dot, -1.0, 1.0))
        sin_psi = torch.sin(psi)
        a = self.alpha
        # the interpolated direction, times ||g||, replaces p.grad
        for p in params:
            v0, v1 = self.state[p]["v0"], self.state[p]["v1"]
            p.grad = torch.where(
                sin_psi < coefficients.SIN_PSI_MIN,
                (scale * 0.5) * (v0 + v1),
                (scale * torch.sin((1 - a) * psi) / sin_psi) * v0
                + (scale * torch.sin(a * psi) / sin_psi) * v1,
            )
        # restore theta_0 by assigning a copy of the backup, then the base step
        for group in self.param_groups:
            for p in group["params"]:
                p.data = self.state[p]["data_0"].clone()
        self.base_optimizer.step()
        return scale


class ForeachXSAM(_BaselineXSAM):
    """BASELINE: the same step with ``torch._foreach_*`` ops (see module docstring)."""

    def _make_base(
        self, cls: type[torch.optim.Optimizer], kwargs: dict[str, Any]
    ) -> torch.optim.Optimizer:
        return cls(self.param_groups, **{"foreach": True, **kwargs})

    def _backups(self, params: list[Tensor]) -> list[Tensor]:
        backups = []
        for p in params:
            state = self.state[p]
            if "theta0" not in state:
                state["theta0"] = torch.empty_like(p)
            backups.append(state["theta0"])
        return backups

    def _lists(self) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        params = self._with_grad()
        return params, [p.grad for p in params], self._backups(params)

    @staticmethod
    def _norm(tensors: list[Tensor]) -> Tensor:
        acc = coefficients.accumulation_dtype(tensors[0].dtype)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2, dtype=acc)))

    @torch.no_grad()
    def backup_param(self) -> None:
        """Optional: :meth:`first_step` backs up in the same call when this was not called."""
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if params:
            torch._foreach_copy_(self._backups(params), params)
        self._backed_up = True

    @torch.no_grad()
    def first_step(self, step: int = 0) -> None:
        params, grads, backups = self._lists()
        if not params:
            return
        if not getattr(self, "_backed_up", False):
            torch._foreach_copy_(backups, params)
            self._backed_up = True
        scale = (self.rho / (self._norm(grads) + self.eps)).item()
        torch._foreach_add_(params, grads, alpha=scale)

    def _second_lists(self, update_alpha: bool) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The lists of :meth:`_lists` for a ``second_step``, which ends the step."""
        if update_alpha:
            raise NotImplementedError("the baselines run fixed alpha only")
        self._backed_up = False
        return self._lists()

    @torch.no_grad()
    def second_step(self, update_alpha: bool = False, *args: Any, **kwargs: Any) -> Tensor | None:
        params, grads, backups = self._second_lists(update_alpha)
        if not params:
            return None
        acc = coefficients.accumulation_dtype(params[0].dtype)
        norm_g = self._norm(grads)
        torch._foreach_sub_(params, backups)  # the parameters now hold d
        norm_d = self._norm(params)
        dot = torch.stack(
            [torch.dot(d.reshape(-1), g.reshape(-1)).to(acc) for d, g in zip(params, grads)]
        ).sum()
        sums = torch.stack([norm_g * norm_g, norm_d * norm_d, dot])
        psi, norm_g, norm_d = coefficients.angle(sums, self.eps)
        c_d, c_g = coefficients.interpolation_coefficients(
            norm_g, self.alpha, psi, norm_g, norm_d, self.eps
        ).tolist()
        torch._foreach_mul_(grads, c_g)
        torch._foreach_add_(grads, params, alpha=c_d)  # grads now hold G
        torch._foreach_copy_(params, backups)  # back to theta_0
        self.base_optimizer.step()
        return norm_g


_REFERENCE = ReferenceBackend()


def _reference_ascent(
    params: list[Tensor],
    grads: list[Tensor],
    backups: list[Tensor],
    sc: Tensor,
    hyper: Tensor,
    backup: bool,
) -> None:
    """The reference backend's ascent phase, as the optimizer runs it on one bucket:
    ``||g||^2``, the skip flag, then backup (if ``backup``) and ascent."""
    g = TensorList(grads)
    _REFERENCE.sumsq(g, sc[B.SUMSQ : B.SUMSQ + 1], accumulate=False)
    coefficients.ascent_scalars(sc, first=True, check=True)
    _REFERENCE.backup_ascent(TensorList(params), g, TensorList(backups), sc, hyper, backup=backup)


def _reference_update(
    params: list[Tensor],
    grads: list[Tensor],
    backups: list[Tensor],
    bufs: list[Tensor] | None,
    sc: Tensor,
    hyper: Tensor,
    *,
    weight_decay: bool,
    nesterov: bool,
    init_bufs: bool,
) -> None:
    """The reference backend's update phase with SGD, as the optimizer runs it on one
    bucket: the final sums, the derived scalars, then the fused SGD step from theta_0."""
    points, theta0, g = TensorList(params), TensorList(backups), TensorList(grads)
    _REFERENCE.final_sums(points, theta0, g, sc[B.SUMS], accumulate=False)
    coefficients.update_scalars(sc, check=True)
    _REFERENCE.sgd_update(
        points,
        points,
        theta0,
        g,
        None if bufs is None else TensorList(bufs),
        sc,
        hyper,
        weight_decay=weight_decay,
        momentum=bufs is not None,
        nesterov=nesterov,
        maximize=False,
        init_bufs=init_bufs,
    )


class CompiledXSAM(ForeachXSAM):
    """BASELINE: ``torch.compile`` of the reference backend's phases with SGD (see module
    docstring).

    The momentum buffers live in the base SGD's state (``momentum_buffer``), as
    torch's SGD keeps them; the base optimizer itself is never stepped.
    """

    def __init__(self, *args: Any, compile_backend: str = "inductor", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.base_optimizer, torch.optim.SGD):
            raise ValueError("CompiledXSAM benchmarks SGD only")
        group = self.param_groups[0]
        device = group["params"][0].device
        self.max_grad_norm = None
        scalars = DeviceScalars()
        scalars.refresh(self)  # alpha, eps, no clipping
        self._sc = scalars.on(device)
        self._hyper = Hyper(device)
        for index, key in (
            (B.H_LR, "lr"),
            (B.H_WEIGHT_DECAY, "weight_decay"),
            (B.H_MOMENTUM, "momentum"),
            (B.H_DAMPENING, "dampening"),
        ):
            self._hyper.set(index, group[key])
        self._hyper.set(B.H_RADIUS, self.rho)
        # fullgraph: a graph break would leave part of the step uncompiled, silently
        compile_ = functools.partial(torch.compile, fullgraph=True, backend=compile_backend)
        self._compiled_ascent = compile_(_reference_ascent)
        self._compiled_update = compile_(_reference_update)

    @torch.no_grad()
    def first_step(self, step: int = 0) -> None:
        params, grads, backups = self._lists()
        if not params:
            return
        backup = not getattr(self, "_backed_up", False)
        self._compiled_ascent(params, grads, backups, self._sc, self._hyper.tensor, backup)
        self._backed_up = True

    @torch.no_grad()
    def second_step(self, update_alpha: bool = False, *args: Any, **kwargs: Any) -> Tensor | None:
        params, grads, backups = self._second_lists(update_alpha)
        if not params:
            return None
        group = self.param_groups[0]
        bufs = None
        init_bufs = False
        if group["momentum"] != 0:
            state = self.base_optimizer.state
            init_bufs = "momentum_buffer" not in state[params[0]]
            if init_bufs:  # written by the first update (buf = G), as torch's SGD does
                for p in params:
                    state[p]["momentum_buffer"] = torch.empty_like(p)
            bufs = [state[p]["momentum_buffer"] for p in params]
        # the first update, which creates the buffers, runs once: not worth a compilation
        update = _reference_update if init_bufs else self._compiled_update
        update(
            params,
            grads,
            backups,
            bufs,
            self._sc,
            self._hyper.tensor,
            weight_decay=group["weight_decay"] != 0,
            nesterov=group["nesterov"],
            init_bufs=init_bufs,
        )
        return self._sc[B.NORM_G].clone()


#: label -> class, as the harness reports them
BASELINES: dict[str, type[_BaselineXSAM]] = {
    "authors-style": AuthorsStyleXSAM,
    "foreach": ForeachXSAM,
    "compiled": CompiledXSAM,
}
