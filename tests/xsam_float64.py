"""An independent float64 re-derivation of one XSAM step, written from docs/algorithm.md.

Nothing here imports ``xsam_fast``: the point is a second, deliberately plain
implementation (one tensor at a time, scalars as Python floats, the base
optimizers' update rules restated from the torch documentation) that the
package is checked against. It works on a float64 copy of the model and calls
autograd itself, so it also checks which passes the package runs.

Usage::

    ref = Float64XSAM(model64, rho=..., steps=..., base="sgd", lr=..., momentum=...)
    ref.step(loss_fn, search=False)       # loss_fn() -> scalar loss of model64
    ref.plain_step(loss_fn)               # a plain base step on the gradient (interval > 1)

Param groups: ``rhos`` / ``rho_maxes`` give each parameter its group's ``rho`` /
``rho_max`` (lists over ``model.parameters()`` that require grad; read at every
step, so a test may change them between steps); the norms stay global.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))


class Float64XSAM:
    """One XSAM step per :meth:`step` on the float64 ``model`` (parameters changed in place).

    ``base`` is ``"sgd"`` (torch.optim.SGD semantics: momentum, dampening,
    nesterov, weight_decay), ``"adam"`` (L2 weight decay) or ``"adamw"``
    (decoupled weight decay). ``rho`` is the TOTAL ascent length.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rho: float,
        steps: int = 1,
        rho_max: float | None = None,
        alpha: float = 1.0,
        alpha_max: float = 2.0,
        alpha_delta: float = 0.1,
        eps: float = 1e-12,
        base: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        adam_eps: float = 1e-8,
        rhos: list[float] | None = None,
        rho_maxes: list[float] | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rho, self.steps = rho, steps
        self.rho_max = 2 * rho if rho_max is None else rho_max
        self.alpha, self.alpha_max, self.alpha_delta, self.eps = alpha, alpha_max, alpha_delta, eps
        self.base, self.lr = base, lr
        self.momentum, self.dampening, self.nesterov = momentum, dampening, nesterov
        self.weight_decay, self.betas, self.adam_eps = weight_decay, betas, adam_eps
        self.rhos, self.rho_maxes = rhos, rho_maxes  # per parameter, or None: rho / rho_max
        self.max_grad_norm = max_grad_norm  # clip G as clip_grad_norm_ does
        self.state: dict[int, dict] = {}
        # what the last step saw, for checking the reported statistics
        self.psi = self.grad_norm = self.d_norm = None
        self.curve: list[tuple[float, float]] = []

    # ------------------------------------------------------------------
    def _grads(self, loss_fn: Callable[[], torch.Tensor]) -> list[torch.Tensor | None]:
        with torch.enable_grad():
            loss = loss_fn()
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return [None if g is None else g.detach().double() for g in grads]

    def _v(self, alpha: float, v0: list, v1: list, psi: float) -> list[torch.Tensor]:
        s = math.sin(psi)
        if s < 1e-8:
            return [(a + b) / 2 for a, b in zip(v0, v1)]
        ca, cb = math.sin((1 - alpha) * psi) / s, math.sin(alpha * psi) / s
        return [ca * a + cb * b for a, b in zip(v0, v1)]

    def step(
        self, loss_fn: Callable[[], torch.Tensor], search: bool = False, lr: float | None = None
    ) -> None:
        if lr is not None:
            self.lr = lr
        bn = _bn_layers(self.model)
        saved_momentum = [m.momentum for m in bn]
        # running statistics (num_batches_tracked included) move in the first pass only
        saved_count = []
        with torch.no_grad():
            theta0 = [p.detach().clone() for p in self.params]
        for i in range(self.steps):
            grads = self._grads(loss_fn)
            if i == 0:
                for m in bn:
                    m.momentum = 0.0
                    saved_count.append(
                        None if m.num_batches_tracked is None else int(m.num_batches_tracked)
                    )
            live = [g for g in grads if g is not None]
            norm = _norm(live)
            with torch.no_grad():
                for j, (p, g) in enumerate(zip(self.params, grads)):
                    if g is not None:
                        p.add_((self._rho(j) / self.steps) / (norm + self.eps) * g)
        grads = self._grads(loss_fn)
        idx = [j for j, g in enumerate(grads) if g is not None]
        g = [grads[j] for j in idx]
        with torch.no_grad():  # params without a final gradient take no part: back to theta_0
            for j, gj in enumerate(grads):
                if gj is None:
                    self.params[j].copy_(theta0[j])
        d = [(self.params[j].detach() - theta0[j]) for j in idx]
        ng, nd = _norm(g), _norm(d)
        v0 = [x / (nd + self.eps) for x in d]
        v1 = [x / (ng + self.eps) for x in g]
        cos = max(-1.0, min(1.0, _dot(v0, v1)))
        psi = math.acos(cos)
        self.psi, self.grad_norm, self.d_norm = psi, ng, nd

        if search:
            best, best_loss, curve = 0.0, 0.0, []
            for a in np.arange(0.0, self.alpha_max + 1e-5, self.alpha_delta):
                a = float(a)
                v = self._v(a, v0, v1, psi)
                with torch.no_grad():
                    for j, vj in zip(idx, v):
                        self.params[j].copy_(theta0[j] + self._rho_max(j) * vj)
                    loss = float(loss_fn())
                curve.append((a, loss))
                if loss > best_loss:
                    best, best_loss = a, loss
            self.alpha, self.curve = best, curve

        G = [ng * x for x in self._v(self.alpha, v0, v1, psi)]
        if self.max_grad_norm is not None:
            clip = min(1.0, self.max_grad_norm / (_norm(G) + 1e-6))
            G = [clip * x for x in G]
        with torch.no_grad():
            for p, t0 in zip(self.params, theta0):
                p.copy_(t0)
            for j, Gj in zip(idx, G):
                self._base_update(j, self.params[j], Gj)
        for m, mom, count in zip(bn, saved_momentum, saved_count):
            m.momentum = mom
            if count is not None:
                m.num_batches_tracked.fill_(count)

    def plain_step(self, loss_fn: Callable[[], torch.Tensor], lr: float | None = None) -> None:
        """One forward/backward and the base update on the plain gradient (no ascent)."""
        if lr is not None:
            self.lr = lr
        grads = self._grads(loss_fn)
        with torch.no_grad():
            for j, g in enumerate(grads):
                if g is not None:
                    self._base_update(j, self.params[j], g)

    def _rho(self, j: int) -> float:
        return self.rho if self.rhos is None else self.rhos[j]

    def _rho_max(self, j: int) -> float:
        if self.rho_maxes is not None:
            return self.rho_maxes[j]
        return self.rho_max if self.rhos is None else 2 * self.rhos[j]

    # ------------------------------------------------------------------
    def _base_update(self, j: int, p: torch.Tensor, G: torch.Tensor) -> None:
        st = self.state.setdefault(j, {})
        lr, wd = self.lr, self.weight_decay
        if self.base == "sgd":
            step = G + wd * p if wd else G.clone()
            if self.momentum:
                if "buf" not in st:
                    st["buf"] = step.clone()
                else:
                    st["buf"] = self.momentum * st["buf"] + (1 - self.dampening) * step
                buf = st["buf"]
                step = step + self.momentum * buf if self.nesterov else buf
            p.sub_(lr * step)
            return
        b1, b2 = self.betas
        st["t"] = st.get("t", 0) + 1
        t = st["t"]
        if "m" not in st:
            st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
        grad = G
        if self.base == "adamw":
            p.mul_(1 - lr * wd)
        elif wd:
            grad = G + wd * p
        st["m"] = b1 * st["m"] + (1 - b1) * grad
        st["v"] = b2 * st["v"] + (1 - b2) * grad * grad
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        denom = st["v"].sqrt() / math.sqrt(bc2) + self.adam_eps
        p.sub_((lr / bc1) * st["m"] / denom)
