"""The authors' XSAM step, restated independently for ``tests/test_fidelity.py``.

Written from the paper (arXiv 2603.10048) and the authors' published code
(repository Cccjl219/XSAM, ``utils/xsam.py`` and ``train.py``), in their
structure and with their arithmetic: one tensor at a time, a backup of every
parameter, ``steps`` ascents each normalised by the global norm of its own
gradient (the norm of the per-tensor norms), unit vectors ``v0``, ``v1`` stored
per tensor, ``psi = arccos(<v0, v1>)`` without clamping, the interpolation with
their degenerate rule, their grid search with their selection rule (start from
``(alpha, loss) = (0, 0)``, keep strictly larger losses), restore, base step.
``rho`` is per ascent, as their class takes it.

Nothing here imports ``xsam_fast``: the package's coefficients and backends are
not the judge of themselves. The base optimizer is a plain ``torch.optim`` one,
as in their code. Use only where their code is well-defined (finite,
non-degenerate norms unless eps > 0; a positive loss somewhere on the grid for
the search); see ``docs/algorithm.md`` for where the package differs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

Criterion = Callable[[Any, Any], Tensor]


class AuthorsXSAM:
    """The authors' optimizer: ``backup_param``, ``first_step``, ``second_step``, ``zero_grad``.

    Constructor arguments in the authors' order; ``rho`` is the length of ONE
    ascent. ``curve`` holds the ``(alpha, loss)`` pairs of the last search.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        base_optimizer: type[torch.optim.Optimizer],
        steps: int,
        rho: float,
        rho_max: float,
        alpha: float,
        alpha_max: float,
        alpha_delta: float,
        eps: float,
        **base_kwargs: Any,
    ) -> None:
        self.params = list(params)
        self.base_optimizer = base_optimizer(self.params, **base_kwargs)
        self.steps, self.rho, self.rho_max, self.eps = steps, rho, rho_max, eps
        self.alpha, self.alpha_max, self.alpha_delta = alpha, alpha_max, alpha_delta
        self.theta0: dict[Tensor, Tensor] = {}
        self.v0: dict[Tensor, Tensor] = {}
        self.v1: dict[Tensor, Tensor] = {}
        self.curve: list[tuple[float, float]] = []

    # ------------------------------------------------------------ helpers
    def _with_grad(self) -> list[Tensor]:
        return [p for p in self.params if p.grad is not None]

    @staticmethod
    def _global_norm(tensors: list[Tensor]) -> Tensor:
        """Their global norm: the L2 norm of the per-tensor L2 norms."""
        return torch.stack([t.norm(p=2) for t in tensors]).norm(p=2)

    def zero_grad(self) -> None:
        self.base_optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------ the phases
    @torch.no_grad()
    def backup_param(self) -> None:
        """theta_0 of EVERY parameter, with a gradient or not."""
        self.theta0 = {p: p.detach().clone() for p in self.params}

    @torch.no_grad()
    def first_step(self, step: int) -> None:
        """One ascent of length rho along the current gradient, globally normalised."""
        params = self._with_grad()
        factor = self.rho / (self._global_norm([p.grad for p in params]) + self.eps)
        for p in params:
            p.add_(p.grad * factor)

    @torch.no_grad()
    def second_step(
        self, update_alpha: bool, model: nn.Module, inputs: Any, targets: Any, criterion: Criterion
    ) -> Tensor:
        """v0, v1, optional search, G into ``.grad``, restore theta_0, base step; returns ||g||."""
        params = self._with_grad()
        grad_norm = self._global_norm([p.grad for p in params])
        displacement = {p: p.detach() - self.theta0[p] for p in params}
        d_norm = self._global_norm(list(displacement.values()))
        self.v0 = {p: d / (d_norm + self.eps) for p, d in displacement.items()}
        self.v1 = {p: p.grad / (grad_norm + self.eps) for p in params}
        if update_alpha:
            self._search(model, inputs, targets, criterion)
        direction = self._interpolate(self.alpha, grad_norm)
        for p in params:
            p.grad = direction[p]
        self._restore()
        self.base_optimizer.step()
        return grad_norm

    # ------------------------------------------------------------ internals
    def _interpolate(self, alpha: float, scale: Tensor | float) -> dict[Tensor, Tensor]:
        """``scale * v(alpha)`` per tensor; ``scale * (v0 + v1) / 2`` when sin(psi) < 1e-8."""
        cos_psi = sum((self.v0[p] * self.v1[p]).sum() for p in self.v0)
        psi = torch.arccos(cos_psi)
        sin_psi = torch.sin(psi)
        out = {}
        for p in self.v0:
            slerp = (scale * torch.sin((1 - alpha) * psi) / sin_psi) * self.v0[p] + (
                scale * torch.sin(alpha * psi) / sin_psi
            ) * self.v1[p]
            mean = (scale * 0.5) * (self.v0[p] + self.v1[p])
            out[p] = torch.where(sin_psi < 1e-8, mean, slerp)
        return out

    def _search(self, model: nn.Module, inputs: Any, targets: Any, criterion: Criterion) -> None:
        """Loss at theta_0 + rho_max v(alpha) on their grid, forward only; their selection rule."""
        best_alpha, best_loss = 0.0, 0.0
        self.curve = []
        for alpha in np.arange(0.0, self.alpha_max + 1e-5, self.alpha_delta):
            point = self._interpolate(alpha, self.rho_max)
            for p, step in point.items():
                p.copy_(self.theta0[p] + step)
            loss = criterion(model(inputs), targets).item()
            self.curve.append((float(alpha), loss))
            if loss > best_loss:
                best_alpha, best_loss = float(alpha), loss
        self.alpha = best_alpha

    def _restore(self) -> None:
        for p in self.params:
            p.copy_(self.theta0[p])


def disable_running_stats(model: nn.Module) -> None:
    """Their helper: remember each BN layer's momentum and set it to 0."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.saved_momentum = m.momentum
            m.momentum = 0


def enable_running_stats(model: nn.Module) -> None:
    """Their helper: give each BN layer the momentum remembered by :func:`disable_running_stats`."""
    for m in model.modules():
        if isinstance(m, _BatchNorm) and hasattr(m, "saved_momentum"):
            m.momentum = m.saved_momentum


def train_step(
    opt: Any,
    model: nn.Module,
    criterion: Criterion,
    inputs: Any,
    targets: Any,
    update_alpha: bool,
    enable: Callable[[nn.Module], None] = enable_running_stats,
    disable: Callable[[nn.Module], None] = disable_running_stats,
) -> Tensor:
    """One training step in the order of their ``train.py``; returns what ``second_step`` returns.

    ``opt`` is anything with their methods (:class:`AuthorsXSAM`, or the package's
    optimizers); ``enable``/``disable`` are the BN helpers to use (theirs by default).
    """
    model.train()
    enable(model)
    opt.backup_param()
    for step in range(opt.steps):
        loss = criterion(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.first_step(step=step)
        if step == 0:
            disable(model)
    loss = criterion(model(inputs), targets)
    opt.zero_grad()
    loss.backward()
    return opt.second_step(
        update_alpha=update_alpha, model=model, inputs=inputs, targets=targets, criterion=criterion
    )
