"""The pure-PyTorch reference backend: the definition every fast path is held to.

One tensor at a time, written for clarity, not speed. 16-bit tensors are
widened to float32 for the math and rounded once when stored, which is what
the fused kernels do too. Scalars are read from the device vectors ``sc`` and
``hyper`` as 0-d tensors (float64, converted to the accumulation dtype where an
elementwise operation uses them), so nothing here synchronises with the host.
Runs on any device, with any strides.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import coefficients
from ..coefficients import accumulation_dtype
from .base import (
    COEFFS,
    FOUND_INF,
    H_ADAM_EPS,
    H_BETA1,
    H_BETA2,
    H_DAMPENING,
    H_LR,
    H_MOMENTUM,
    H_WEIGHT_DECAY,
    Backend,
)
from .packed import TensorList, check_layout


def _wide(t: Tensor) -> Tensor:
    return t.to(accumulation_dtype(t.dtype))


def _t(theta0: Tensor, eta: float) -> Tensor:
    """The ASAM scale ``T = |theta_0| + eta`` in the accumulation dtype."""
    return _wide(theta0).abs() + eta


def search_point(
    point: Tensor, backup: Tensor, grad: Tensor, c_d: Tensor, c_g: Tensor, eta: float | None
) -> Tensor:
    """``theta_0 + (c_d d + c_g g)`` (ASAM: ``c_g T^2 g``) in the accumulation dtype;
    ``c_d``, ``c_g`` broadcast against the tensors (0-d, or (K, 1, ...) for K points)."""
    d = _wide(point) - _wide(backup)
    g = _wide(grad)
    if eta is not None:
        t = _t(backup, eta)
        g = (t * t) * g
    return _wide(backup) + (c_d * d + c_g * g)


def _store(
    out: Tensor, value: Tensor, found: Tensor | None = None, old: Tensor | None = None
) -> None:
    """``out <- value``, or ``out <- old`` (``out`` itself when None) where ``found`` is set."""
    if found is not None:
        value = torch.where(found, _wide(out) if old is None else old, value)
    out.copy_(value)


class ReferenceBackend(Backend):
    name = "reference"
    follows_storage = True  # it steps the tensors themselves

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return dtype.is_floating_point

    def pack(self, tensors, like=None, *, grads=False) -> TensorList:
        check_layout(tensors, like, dense=False, grads=grads)
        return TensorList(tensors)

    # ------------------------------------------------------------------ reductions
    @staticmethod
    def _add(out: Tensor, value: Tensor, accumulate: bool) -> None:
        value = value.to(out.dtype)
        out.copy_(out + value if accumulate else value)

    def sumsq(self, grads, out, *, accumulate, weights=None, eta=None):
        if eta is not None and weights is None:
            raise ValueError("sumsq with eta needs the weights (theta_0) that T is made of")
        total = torch.zeros((), dtype=torch.float64, device=out.device)
        if len(grads):
            acc = accumulation_dtype(grads[0].dtype)
            part = torch.zeros((), dtype=acc, device=grads[0].device)
            for i, t in enumerate(grads):
                w = _wide(t)
                if eta is not None:
                    w = _t(weights[i], eta) * w
                part = part + (w * w).sum()
            total = part.to(torch.float64)
        self._add(out, total.reshape(1), accumulate)

    def final_sums(self, points, backups, grads, out, *, accumulate, eta=None):
        sums = torch.zeros(3, dtype=torch.float64, device=out.device)
        if len(points):
            acc = accumulation_dtype(points[0].dtype)
            part = torch.zeros(3, dtype=acc, device=points[0].device)
            for x, b, g in zip(points, backups, grads):
                d = _wide(x) - _wide(b)
                gw = _wide(g)
                if eta is None:
                    gu, du = gw, d
                else:
                    t = _t(b, eta)
                    gu, du = t * gw, d / t
                part = part + torch.stack([(gu * gu).sum(), (du * du).sum(), (d * gw).sum()])
            sums = part.to(torch.float64)
        self._add(out, sums, accumulate)

    # ------------------------------------------------------------------ elementwise
    def backup_ascent(self, params, grads, backups, sc, hyper, *, backup, eta=None):
        if not len(params):
            return
        scale = coefficients.ascent_scale_of(sc, hyper).to(accumulation_dtype(params[0].dtype))
        for p, g, b in zip(params, grads, backups):
            step = _wide(g)
            if eta is not None:
                t = _t(p if backup else b, eta)  # theta_0, read before p is written
                step = (t * t) * step
            if backup:
                b.copy_(p)
            p.copy_(_wide(p) + scale * step)

    @staticmethod
    def _direction(
        point: Tensor, backup: Tensor, grad: Tensor, coeffs: Tensor, eta: float | None
    ) -> Tensor:
        """The update direction G (``c_d d + c_g g``, or ``c_d q + c_g g``, ``q = d / T^2``)."""
        d = _wide(point) - _wide(backup)
        if eta is not None:
            t = _t(backup, eta)
            tt = t * t
            d = torch.where(
                tt != 0, d / torch.where(tt != 0, tt, torch.ones_like(tt)), torch.zeros_like(d)
            )
        return coeffs[0] * d + coeffs[1] * _wide(grad)

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        if not len(out):
            return
        co = coeffs.to(accumulation_dtype(out[0].dtype))
        for o, x, b, g in zip(out, points, backups, grads):
            o.copy_(search_point(x, b, g, co[0], co[1], eta))

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        if not len(params):
            return
        co = coeffs.to(accumulation_dtype(params[0].dtype))
        for p, x, b, g in zip(params, points, backups, grads):
            g.copy_(self._direction(x, b, g, co, eta))
            p.copy_(b)

    def sgd_update(
        self,
        params,
        points,
        backups,
        grads,
        bufs,
        sc,
        hyper,
        *,
        weight_decay,
        momentum,
        nesterov,
        maximize,
        init_bufs,
        eta=None,
    ):
        if not len(params):
            return
        acc = accumulation_dtype(params[0].dtype)
        co = sc[COEFFS].to(acc)
        found = sc[FOUND_INF] != 0
        lr, wd = hyper[H_LR].to(acc), hyper[H_WEIGHT_DECAY].to(acc)
        mom, keep = hyper[H_MOMENTUM].to(acc), (1.0 - hyper[H_DAMPENING]).to(acc)
        for i, (p, x, b, g) in enumerate(zip(params, points, backups, grads)):
            theta0 = _wide(b)
            step = self._direction(x, b, g, co, eta)
            if maximize:
                step = -step
            if weight_decay:
                step = step + wd * theta0
            if momentum:
                buf = step if init_bufs else mom * _wide(bufs[i]) + keep * step
                _store(bufs[i], buf, found, torch.zeros_like(buf) if init_bufs else None)
                step = step + mom * buf if nesterov else buf
            _store(p, theta0 - lr * step, found, theta0)

    def adam_update(
        self,
        params,
        points,
        backups,
        grads,
        exp_avgs,
        exp_avg_sqs,
        steps,
        sc,
        hyper,
        *,
        weight_decay,
        decoupled,
        maximize,
        eta=None,
    ):
        if not len(params):
            return
        acc = accumulation_dtype(params[0].dtype)
        co = sc[COEFFS].to(acc)
        found = sc[FOUND_INF] != 0
        lr, beta1, beta2 = hyper[H_LR], hyper[H_BETA1], hyper[H_BETA2]
        eps, wd = hyper[H_ADAM_EPS].to(acc), hyper[H_WEIGHT_DECAY]
        w1, w2, b2 = (1.0 - beta1).to(acc), (1.0 - beta2).to(acc), beta2.to(acc)
        decay = (1.0 - lr * wd).to(acc)
        # per tensor, in float64 as torch computes them in Python
        step = steps.to(device=hyper.device, dtype=torch.float64)
        step_size = (lr / (1.0 - torch.pow(beta1, step))).to(acc)
        bc2_sqrt = torch.pow(1.0 - torch.pow(beta2, step), 0.5).to(acc)
        for i, (p, x, b, g, m, v) in enumerate(
            zip(params, points, backups, grads, exp_avgs, exp_avg_sqs)
        ):
            theta0 = _wide(b)
            theta = theta0
            direction = self._direction(x, b, g, co, eta)
            if maximize:
                direction = -direction
            if weight_decay:
                if decoupled:
                    theta = theta * decay
                else:
                    direction = direction + wd.to(acc) * theta
            m_new = torch.lerp(_wide(m), direction, w1)
            v_new = b2 * _wide(v) + w2 * direction * direction
            _store(m, m_new, found)
            _store(v, v_new, found)
            new = theta - step_size[i] * m_new / (v_new.sqrt() / bc2_sqrt[i] + eps)
            _store(p, new, found, theta0)
