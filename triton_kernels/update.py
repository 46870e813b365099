"""Interpolation fused with the base optimizer's update, stepping from theta_0.

``G = c_d (points - backups) + c_g grads`` is formed in registers and fed to
``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay, maximize) or
``torch.optim.Adam``/``AdamW`` (amsgrad off); the operations follow the
reference backend one by one (same order, one rounding each). Hyper-parameters
are read from a small device tensor in the accumulation dtype; switches that
change the code (momentum on/off, Nesterov, ...) are compile-time constants.
One launch per call.
"""
from __future__ import annotations

from typing import Sequence

import triton
import triton.language as tl
from torch import Tensor

from .common import asam_t, div, load, locate, sqrt, store
from .perturb import eta_tensor
from .config import DTYPES, LAUNCH_OPTIONS
from .tables import Tables

# Scalar tensors (``hyper``), built by the launchers below:
#   SGD:  [lr, weight_decay, momentum, 1 - dampening]
#   Adam: [1 - beta1, beta2, 1 - beta2, eps, weight_decay, 1 - lr weight_decay,
#          step_size, bias_correction2_sqrt]


@triton.jit
def _direction(X, B, G, coeffs, eta, t, offs, n, DT: tl.constexpr, ACC: tl.constexpr,
               MAXIMIZE: tl.constexpr, ADAPTIVE: tl.constexpr, MASKED: tl.constexpr,
               ALIGNED: tl.constexpr):
    """``(theta_0, G)`` with ``G = c_d (x - theta_0) + c_g g`` (``ADAPTIVE``:
    ``c_d (x - theta_0) / T^2 + c_g g``, ``T = |theta_0| + eta``), negated if ``MAXIMIZE``."""
    b = load(B, t, offs, n, DT, ACC, MASKED, ALIGNED)
    d = load(X, t, offs, n, DT, ACC, MASKED, ALIGNED) - b
    g = load(G, t, offs, n, DT, ACC, MASKED, ALIGNED)
    if ADAPTIVE:
        tt = asam_t(b, eta, ACC)
        d = div(d, tt * tt, ACC)
    step = tl.load(coeffs).to(ACC) * d + tl.load(coeffs + 1).to(ACC) * g
    if MAXIMIZE:
        step = -step
    return b, step


@triton.jit
def _sgd_chunk(P, X, B, G, BUF, coeffs, hyper, eta, t, offs, n, DT: tl.constexpr,
               ACC: tl.constexpr, MAXIMIZE: tl.constexpr, ADAPTIVE: tl.constexpr,
               WEIGHT_DECAY: tl.constexpr,
               MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, INIT_BUFS: tl.constexpr,
               MASKED: tl.constexpr, ALIGNED: tl.constexpr):
    theta0, step = _direction(X, B, G, coeffs, eta, t, offs, n, DT, ACC, MAXIMIZE, ADAPTIVE,
                              MASKED, ALIGNED)
    if WEIGHT_DECAY:
        step = step + tl.load(hyper + 1) * theta0
    if MOMENTUM:
        momentum = tl.load(hyper + 2)
        if INIT_BUFS:
            buf = step
        else:
            buf = momentum * load(BUF, t, offs, n, DT, ACC, MASKED, ALIGNED) \
                + tl.load(hyper + 3) * step
        store(BUF, t, offs, n, buf, DT, MASKED, ALIGNED)
        if NESTEROV:
            step = step + momentum * buf
        else:
            step = buf
    store(P, t, offs, n, theta0 - tl.load(hyper) * step, DT, MASKED, ALIGNED)


@triton.jit
def _sgd_kernel(P, X, B, G, BUF, coeffs, hyper, eta, numels, work, DT: tl.constexpr,
                ACC: tl.constexpr, MAXIMIZE: tl.constexpr, ADAPTIVE: tl.constexpr,
               WEIGHT_DECAY: tl.constexpr,
                MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, INIT_BUFS: tl.constexpr,
                BLOCK: tl.constexpr, LARGE: tl.constexpr, ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _sgd_chunk(P, X, B, G, BUF, coeffs, hyper, eta, t, offs, n, DT, ACC, MAXIMIZE, ADAPTIVE,
                   WEIGHT_DECAY,
                   MOMENTUM, NESTEROV, INIT_BUFS, False, ALIGNED)
    else:
        _sgd_chunk(P, X, B, G, BUF, coeffs, hyper, eta, t, offs, n, DT, ACC, MAXIMIZE, ADAPTIVE,
                   WEIGHT_DECAY,
                   MOMENTUM, NESTEROV, INIT_BUFS, True, ALIGNED)


@triton.jit
def _adam_chunk(P, X, B, G, M, V, coeffs, hyper, eta, t, offs, n, DT: tl.constexpr,
                ACC: tl.constexpr, MAXIMIZE: tl.constexpr, ADAPTIVE: tl.constexpr,
               WEIGHT_DECAY: tl.constexpr,
                DECOUPLED: tl.constexpr, LERP_SMALL: tl.constexpr, MASKED: tl.constexpr,
                ALIGNED: tl.constexpr):
    theta, step = _direction(X, B, G, coeffs, eta, t, offs, n, DT, ACC, MAXIMIZE, ADAPTIVE,
                             MASKED, ALIGNED)
    if WEIGHT_DECAY:
        if DECOUPLED:
            theta = theta * tl.load(hyper + 5)
        else:
            step = step + tl.load(hyper + 4) * theta
    # m = lerp(m, G, 1 - beta1), with torch's two formulas for small and large weights
    weight = tl.load(hyper)
    m = load(M, t, offs, n, DT, ACC, MASKED, ALIGNED)
    if LERP_SMALL:
        m = m + weight * (step - m)
    else:
        m = step - (step - m) * (1.0 - weight)
    v = tl.load(hyper + 1) * load(V, t, offs, n, DT, ACC, MASKED, ALIGNED) \
        + tl.load(hyper + 2) * step * step
    store(M, t, offs, n, m, DT, MASKED, ALIGNED)
    store(V, t, offs, n, v, DT, MASKED, ALIGNED)
    denom = div(sqrt(v, ACC), tl.load(hyper + 7), ACC) + tl.load(hyper + 3)
    store(P, t, offs, n, theta - div(tl.load(hyper + 6) * m, denom, ACC), DT, MASKED, ALIGNED)


@triton.jit
def _adam_kernel(P, X, B, G, M, V, coeffs, hyper, eta, numels, work, DT: tl.constexpr,
                 ACC: tl.constexpr, MAXIMIZE: tl.constexpr, ADAPTIVE: tl.constexpr,
               WEIGHT_DECAY: tl.constexpr,
                 DECOUPLED: tl.constexpr, LERP_SMALL: tl.constexpr, BLOCK: tl.constexpr,
                 LARGE: tl.constexpr, ALIGNED: tl.constexpr):
    t, start, n = locate(work, numels, BLOCK, LARGE)
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:
        _adam_chunk(P, X, B, G, M, V, coeffs, hyper, eta, t, offs, n, DT, ACC, MAXIMIZE, ADAPTIVE,
                    WEIGHT_DECAY,
                    DECOUPLED, LERP_SMALL, False, ALIGNED)
    else:
        _adam_chunk(P, X, B, G, M, V, coeffs, hyper, eta, t, offs, n, DT, ACC, MAXIMIZE, ADAPTIVE,
                    WEIGHT_DECAY,
                    DECOUPLED, LERP_SMALL, True, ALIGNED)


def sgd_update(tables: Tables, params: Sequence[Tensor], points: Sequence[Tensor],
               backups: Sequence[Tensor], grads: Sequence[Tensor], bufs: Sequence[Tensor],
               coeffs: Tensor, *, lr: float, weight_decay: float, momentum: float,
               dampening: float, nesterov: bool, maximize: bool, init_bufs: bool,
               eta: float | None = None) -> None:
    lay = tables.layout(params)
    if lay.nblocks == 0:
        return
    has_momentum = momentum != 0
    lists = (params, points, backups, grads) + ((bufs,) if has_momentum else ())
    ptrs = [tables.pointers(ts) for ts in lists]
    buf_table = ptrs[4].table if has_momentum else ptrs[0].table  # unused without momentum
    dt, acc = DTYPES[params[0].dtype]
    hyper = tables.scalars((lr, weight_decay, momentum, 1 - dampening), coeffs.dtype,
                           coeffs.device)
    _sgd_kernel[(lay.nblocks,)](*(p.table for p in ptrs[:4]), buf_table, coeffs, hyper,
                                eta_tensor(tables, eta, params[0]), lay.numels, lay.work, DT=dt,
                                ACC=acc, MAXIMIZE=bool(maximize), ADAPTIVE=eta is not None,
                                WEIGHT_DECAY=weight_decay != 0, MOMENTUM=has_momentum,
                                NESTEROV=bool(nesterov), INIT_BUFS=bool(init_bufs),
                                BLOCK=tables.block, LARGE=lay.large,
                                ALIGNED=all(p.aligned for p in ptrs), **LAUNCH_OPTIONS)


def adam_update(tables: Tables, params: Sequence[Tensor], points: Sequence[Tensor],
                backups: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
                exp_avg_sqs: Sequence[Tensor], coeffs: Tensor, *, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, decoupled: bool, maximize: bool,
                step_size: float, bias_correction2_sqrt: float,
                eta: float | None = None) -> None:
    lay = tables.layout(params)
    if lay.nblocks == 0:
        return
    ptrs = [tables.pointers(ts) for ts in (params, points, backups, grads, exp_avgs, exp_avg_sqs)]
    dt, acc = DTYPES[params[0].dtype]
    weight = 1 - beta1
    hyper = tables.scalars((weight, beta2, 1 - beta2, eps, weight_decay, 1 - lr * weight_decay,
                            step_size, bias_correction2_sqrt), coeffs.dtype, coeffs.device)
    _adam_kernel[(lay.nblocks,)](*(p.table for p in ptrs), coeffs, hyper,
                                 eta_tensor(tables, eta, params[0]), lay.numels, lay.work,
                                 DT=dt, ACC=acc, MAXIMIZE=bool(maximize),
                                 ADAPTIVE=eta is not None,
                                 WEIGHT_DECAY=weight_decay != 0, DECOUPLED=bool(decoupled),
                                 LERP_SMALL=abs(weight) < 0.5, BLOCK=tables.block,
                                 LARGE=lay.large, ALIGNED=all(p.aligned for p in ptrs),
                                 **LAUNCH_OPTIONS)
