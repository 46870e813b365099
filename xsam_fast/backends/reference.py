"""The pure-PyTorch reference backend: the definition every fast path is held to.

One tensor at a time, written for clarity, not speed. 16-bit tensors are
widened to float32 for the math and rounded once when stored, which is what
the fused kernels do too. Runs on any device.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..coefficients import accumulation_dtype
from .base import Backend, Tensors


def _wide(t: Tensor) -> Tensor:
    return t.to(accumulation_dtype(t.dtype))


def _t(theta0: Tensor, eta: float) -> Tensor:
    """The ASAM scale ``T = |theta_0| + eta`` in the accumulation dtype."""
    return _wide(theta0).abs() + eta


class ReferenceBackend(Backend):
    name = "reference"

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        return True, ""

    def supports(self, device: torch.device, dtype: torch.dtype) -> bool:
        return dtype.is_floating_point

    def sumsq(self, tensors: Tensors, *, weights=None, eta=None) -> Tensor:
        if not tensors:
            return torch.zeros((), dtype=torch.float32)
        if eta is not None and weights is None:
            raise ValueError("sumsq with eta needs the weights (theta_0) that T is made of")
        acc = accumulation_dtype(tensors[0].dtype)
        total = torch.zeros((), dtype=acc, device=tensors[0].device)
        for i, t in enumerate(tensors):
            w = _wide(t)
            if eta is not None:
                w = _t(weights[i], eta) * w
            total = total + (w * w).sum()
        return total

    def backup_ascent(self, params, grads, backups, scale, backup, *, eta=None):
        for p, g, b in zip(params, grads, backups):
            step = _wide(g)
            if eta is not None:
                t = _t(p if backup else b, eta)  # theta_0, read before p is written
                step = (t * t) * step
            if backup:
                b.copy_(p)
            p.copy_(_wide(p) + scale * step)

    def final_sums(self, points, backups, grads, *, eta=None):
        acc = accumulation_dtype(points[0].dtype) if points else torch.float32
        device = points[0].device if points else None
        sums = torch.zeros(3, dtype=acc, device=device)
        for x, b, g in zip(points, backups, grads):
            d = _wide(x) - _wide(b)
            gw = _wide(g)
            if eta is None:
                gu, du = gw, d
            else:
                t = _t(b, eta)
                gu, du = t * gw, d / t
            sums = sums + torch.stack([(gu * gu).sum(), (du * du).sum(), (d * gw).sum()])
        return sums

    def _direction(self, point: Tensor, backup: Tensor, grad: Tensor, coeffs: Tensor,
                   eta: float | None) -> Tensor:
        """The update direction G (as ``c_d d + c_g g``, or ``c_d d / T^2 + c_g g``)."""
        d = _wide(point) - _wide(backup)
        if eta is not None:
            t = _t(backup, eta)
            d = d / (t * t)
        return coeffs[0] * d + coeffs[1] * _wide(grad)

    def write_point(self, out, points, backups, grads, coeffs, *, eta=None):
        for o, x, b, g in zip(out, points, backups, grads):
            d = _wide(x) - _wide(b)
            gw = _wide(g)
            if eta is not None:
                t = _t(b, eta)
                gw = (t * t) * gw
            o.copy_(_wide(b) + (coeffs[0] * d + coeffs[1] * gw))

    def write_grad_restore(self, params, points, backups, grads, coeffs, *, eta=None):
        for p, x, b, g in zip(params, points, backups, grads):
            g.copy_(self._direction(x, b, g, coeffs, eta))
            p.copy_(b)

    def sgd_update(self, params, points, backups, grads, bufs, coeffs, *, lr, weight_decay,
                   momentum, dampening, nesterov, maximize, init_bufs, eta=None):
        for i, (p, x, b, g) in enumerate(zip(params, points, backups, grads)):
            theta0 = _wide(b)
            step = self._direction(x, b, g, coeffs, eta)
            if maximize:
                step = -step
            if weight_decay != 0:
                step = step + weight_decay * theta0
            if momentum != 0:
                buf = step if init_bufs else momentum * _wide(bufs[i]) + (1 - dampening) * step
                bufs[i].copy_(buf)
                step = step + momentum * buf if nesterov else buf
            p.copy_(theta0 - lr * step)

    def adam_update(self, params, points, backups, grads, exp_avgs, exp_avg_sqs, coeffs, *, lr,
                    beta1, beta2, eps, weight_decay, decoupled, maximize, step_size,
                    bias_correction2_sqrt, eta=None):
        for p, x, b, g, m, v in zip(params, points, backups, grads, exp_avgs, exp_avg_sqs):
            theta = _wide(b)
            step = self._direction(x, b, g, coeffs, eta)
            if maximize:
                step = -step
            if weight_decay != 0:
                if decoupled:
                    theta = theta * (1 - lr * weight_decay)
                else:
                    step = step + weight_decay * theta
            m_new = torch.lerp(_wide(m), step, 1 - beta1)
            v_new = beta2 * _wide(v) + (1 - beta2) * step * step
            m.copy_(m_new)
            v.copy_(v_new)
            p.copy_(theta - step_size * m_new / (v_new.sqrt() / bias_correction2_sqrt + eps))
