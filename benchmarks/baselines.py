"""BASELINES for the benchmark harness. Not product code: do not import from xsam_fast.

Two XSAM implementations the fused backends are measured against. Both follow
the authors' call sequence (``backup_param()``, ``first_step(step)``, backward
at the ascent point, ``second_step(update_alpha=False)``), fixed alpha only,
and compute the update of ``XSAM_MATH.md``:

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
    ``torch.compile`` of a functional reference step: the same arithmetic as
    ``xsam_fast``'s reference path (global norms, one-pass sums, coefficients
    on the device, G formed and the SGD momentum update applied per tensor),
    written as two plain-PyTorch functions over the lists of parameters,
    gradients, backups and momentum buffers, each compiled once per case
    (Inductor fuses the per-tensor loops into a few kernels; no host read).
    SGD only (momentum, dampening, Nesterov, weight decay), as benchmarked.
    Compilation happens in the warm-up steps and is not timed.

In all three, ``rho`` is the radius of ONE ascent (the authors' convention; equal to
xsam_fast's total ``rho`` for ``steps=1``, the case benchmarked).
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from xsam_fast import coefficients as C

__all__ = ["AuthorsStyleXSAM", "ForeachXSAM", "CompiledXSAM", "BASELINES"]


def _stacked_norm(tensors: list[Tensor]) -> Tensor:
    """Global L2 norm as the authors compute it: norm of the stack of per-tensor norms."""
    return torch.norm(torch.stack([t.norm(p=2) for t in tensors]), p=2)


class _BaselineXSAM(torch.optim.Optimizer):
    """Shared constructor: XSAM hyper-parameters, then the base optimizer on the same groups."""

    def __init__(self, params: Iterable[Any], base_optimizer: type[torch.optim.Optimizer] =
                 torch.optim.SGD, *, rho: float = 0.15, alpha: float = 1.0, eps: float = 1e-12,
                 **base_kwargs: Any) -> None:
        if rho < 0 or eps < 0 or not math.isfinite(alpha):
            raise ValueError("rho and eps must be >= 0 and alpha finite")
        super().__init__(params, dict(base_kwargs))
        self.base_optimizer = self._make_base(base_optimizer, base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.rho = rho
        self.alpha = float(alpha)
        self.eps = eps

    def _make_base(self, cls: type[torch.optim.Optimizer],
                   kwargs: dict[str, Any]) -> torch.optim.Optimizer:
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
            self.state[p]["v0"] /= (d_norm + self.eps)
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
                sin_psi < C.SIN_PSI_MIN,
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

    def _make_base(self, cls: type[torch.optim.Optimizer],
                   kwargs: dict[str, Any]) -> torch.optim.Optimizer:
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
        acc = C.accumulation_dtype(tensors[0].dtype)
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
        acc = C.accumulation_dtype(params[0].dtype)
        norm_g = self._norm(grads)
        torch._foreach_sub_(params, backups)  # the parameters now hold d
        norm_d = self._norm(params)
        dot = torch.stack([torch.dot(d.reshape(-1), g.reshape(-1)).to(acc)
                           for d, g in zip(params, grads)]).sum()
        sums = torch.stack([norm_g * norm_g, norm_d * norm_d, dot])
        psi, norm_g, norm_d = C.angle(sums, self.eps)
        c_d, c_g = C.interpolation_coefficients(norm_g, self.alpha, psi, norm_g, norm_d,
                                                self.eps).tolist()
        torch._foreach_mul_(grads, c_g)
        torch._foreach_add_(grads, params, alpha=c_d)  # grads now hold G
        torch._foreach_copy_(params, backups)  # back to theta_0
        self.base_optimizer.step()
        return norm_g


def _ascent(params: list[Tensor], grads: list[Tensor], backups: list[Tensor], backup: bool,
            rho: float, eps: float) -> None:
    """Backup (optional) and one ascent ``p += rho g / (||g|| + eps)``, in place."""
    acc = C.accumulation_dtype(params[0].dtype)
    sumsq = sum(g.to(acc).square().sum() for g in grads)
    scale = C.ascent_scale(sumsq, rho, eps)
    for p, g, b in zip(params, grads, backups):
        if backup:
            b.copy_(p)
        p.copy_((p.to(acc) + scale * g.to(acc)).to(p.dtype))


def _update(params: list[Tensor], grads: list[Tensor], backups: list[Tensor],
            bufs: list[Tensor], first: bool, alpha: float, eps: float, lr: float,
            momentum: float, dampening: float, nesterov: bool, weight_decay: float) -> Tensor:
    """One-pass sums, coefficients, G, and the SGD step from theta_0, in place; returns ||g||."""
    acc = C.accumulation_dtype(params[0].dtype)
    gs = [g.to(acc) for g in grads]
    ds = [p.to(acc) - b.to(acc) for p, b in zip(params, backups)]
    sums = torch.stack([sum(g.square().sum() for g in gs), sum(d.square().sum() for d in ds),
                        sum((d * g).sum() for d, g in zip(ds, gs))])
    psi, norm_g, norm_d = C.angle(sums, eps)
    c_d, c_g = C.interpolation_coefficients(norm_g, alpha, psi, norm_g, norm_d, eps).unbind(0)
    for p, b, d, g, buf in zip(params, backups, ds, gs, bufs):
        theta0 = b.to(acc)
        step = c_d * d + c_g * g + weight_decay * theta0
        if momentum != 0:
            new_buf = step if first else momentum * buf.to(acc) + (1 - dampening) * step
            buf.copy_(new_buf.to(buf.dtype))
            step = step + momentum * new_buf if nesterov else new_buf
        p.copy_((theta0 - lr * step).to(p.dtype))
    return norm_g


class CompiledXSAM(ForeachXSAM):
    """BASELINE: ``torch.compile`` of a functional XSAM step with SGD (see module docstring).

    The momentum buffers live in the base SGD's state (``momentum_buffer``), as
    torch's SGD keeps them; the base optimizer itself is never stepped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.base_optimizer, torch.optim.SGD):
            raise ValueError("CompiledXSAM benchmarks SGD only")
        self._compiled_ascent = torch.compile(_ascent)
        self._compiled_update = torch.compile(_update)

    @torch.no_grad()
    def first_step(self, step: int = 0) -> None:
        params, grads, backups = self._lists()
        if not params:
            return
        backup = not getattr(self, "_backed_up", False)
        self._compiled_ascent(params, grads, backups, backup, self.rho, self.eps)
        self._backed_up = True

    @torch.no_grad()
    def second_step(self, update_alpha: bool = False, *args: Any, **kwargs: Any) -> Tensor | None:
        params, grads, backups = self._second_lists(update_alpha)
        if not params:
            return None
        group = self.param_groups[0]
        state = self.base_optimizer.state
        first = "momentum_buffer" not in state[params[0]]
        if first:  # filled by the compiled update's first step, as torch's SGD does
            for p in params:
                state[p]["momentum_buffer"] = torch.empty_like(p)
        bufs = [state[p]["momentum_buffer"] for p in params]
        return self._compiled_update(
            params, grads, backups, bufs, first, self.alpha, self.eps, group["lr"],
            group["momentum"], group["dampening"], group["nesterov"], group["weight_decay"])


#: label -> class, as the harness reports them
BASELINES: dict[str, type[_BaselineXSAM]] = {
    "authors-style": AuthorsStyleXSAM,
    "foreach": ForeachXSAM,
    "compiled": CompiledXSAM,
}
